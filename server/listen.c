/* listen.c -- the master's listening socket: resolve, bind, listen, and the URL it answers on.
 *
 * The master binds once, before any worker starts, so a port in use is one clear error at start-up and
 * workers inherit a socket that already listens (MF_FD_LISTEN): no worker ever binds. With
 * --reuseport this is the first slot's socket, and reuseport.c binds the others to its address. */
#include "listen.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define LISTEN_BACKLOG 511

/* The first address of res that binds and listens; -1 with errno in *e when none does. */
static int bind_first(const struct addrinfo *res, int reuseport, int *e) {
  for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      *e = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if ((!reuseport || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0) &&
        bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, LISTEN_BACKLOG) == 0)
      return fd;
    *e = errno;
    close(fd);
  }
  return -1;
}

/* The bound address into cfg->port and url. */
static void bound_url(int fd, mf_config_t *cfg, char *url, size_t urllen) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  char ip[64] = "?";
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) return;
  if (ss.ss_family == AF_INET6) {
    cfg->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
    snprintf(url, urllen, "http://[%s]:%ld", ip, cfg->port);
  } else {
    cfg->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
    snprintf(url, urllen, "http://%s:%ld", ip, cfg->port);
  }
}

int listen_bind(mf_config_t *cfg, char *url, size_t urllen, char *err, size_t errlen) {
  struct addrinfo hints, *res = NULL;
  char port[16];
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  snprintf(port, sizeof port, "%ld", cfg->port);
  int r = getaddrinfo(cfg->host, port, &hints, &res);
  if (r != 0) {
    snprintf(err, errlen, "cannot listen on %s:%ld: %s", cfg->host, cfg->port, gai_strerror(r));
    return -1;
  }
  int e = 0;
  int fd = bind_first(res, (int)cfg->reuseport, &e);
  freeaddrinfo(res);
  if (fd < 0) {
    snprintf(err, errlen, "cannot listen on %s:%ld: %s", cfg->host, cfg->port,
             uv_strerror(uv_translate_sys_error(e)));
    return -1;
  }
  bound_url(fd, cfg, url, urllen);
  return fd;
}
