-- bench/lib/post.lua: wrk script for workload 4, POST of a 4 KB body (echoed back by the server).
wrk.method = "POST"
wrk.body = string.rep("0123456789abcdef", 256)   -- 4096 bytes
wrk.headers["Content-Type"] = "application/octet-stream"
