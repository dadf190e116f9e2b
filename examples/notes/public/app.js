// examples/notes/public/app.js: the notes page. Plain JavaScript over the JSON API (see app.lua):
// the list in pages of PAGE notes (keyset: "Load more" asks for the page after next_cursor), a form
// to add a note, and Edit/Delete on each. Errors from the API are shown as the API words them.
"use strict";

const PAGE = 10;
const $ = (id) => document.getElementById(id);
const list = $("notes");
let nextCursor = null;

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  if (res.status === 204) return null;
  let data = null;
  try { data = await res.json(); } catch (e) { /* not JSON: a proxy's error page */ }
  if (!res.ok) throw new Error((data && data.error) || `HTTP ${res.status}`);
  return data;
}

function showError(err) {
  const p = $("error");
  p.textContent = err ? String(err.message || err) : "";
  p.hidden = !err;
}

function fill(li, note) {
  li.dataset.id = note.id;
  li.querySelector(".title").textContent = note.title;
  li.querySelector(".body").textContent = note.body;
  const edited = note.updated_at !== note.created_at ? ` · edited ${note.updated_at}` : "";
  li.querySelector(".meta").textContent = `#${note.id} · ${note.created_at}${edited}`;
}

function render(note) {
  const li = $("note-template").content.firstElementChild.cloneNode(true);
  fill(li, note);
  const view = li.querySelector(".view"), editor = li.querySelector(".editor");
  li.querySelector(".edit").addEventListener("click", () => {
    editor.querySelector(".edit-title").value = li.querySelector(".title").textContent;
    editor.querySelector(".edit-body").value = li.querySelector(".body").textContent;
    view.hidden = true;
    editor.hidden = false;
    editor.querySelector(".edit-title").focus();
  });
  li.querySelector(".cancel").addEventListener("click", () => { editor.hidden = true; view.hidden = false; });
  editor.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const title = editor.querySelector(".edit-title").value;
      const body = editor.querySelector(".edit-body").value;
      fill(li, await api("PUT", `/api/notes/${li.dataset.id}`, { title, body }));
      editor.hidden = true;
      view.hidden = false;
      showError(null);
    } catch (err) { showError(err); }
  });
  li.querySelector(".delete").addEventListener("click", async () => {
    try {
      await api("DELETE", `/api/notes/${li.dataset.id}`);
      li.remove();
      $("empty").hidden = list.children.length > 0;
      showError(null);
    } catch (err) { showError(err); }
  });
  return li;
}

// Loads the first page (reset) or the page after the last one shown.
async function load(reset) {
  const params = new URLSearchParams({ limit: PAGE });
  if (!reset && nextCursor !== null) params.set("cursor", nextCursor);
  try {
    const page = await api("GET", `/api/notes?${params}`);
    if (reset) list.replaceChildren();
    for (const note of page.notes) list.appendChild(render(note));
    nextCursor = page.next_cursor;
    $("more").hidden = nextCursor === null;
    $("empty").hidden = list.children.length > 0;
    showError(null);
  } catch (err) { showError(err); }
}

$("new-note").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const title = $("new-title").value, body = $("new-body").value;
  try {
    await api("POST", "/api/notes", { title, body });
    $("new-note").reset();
    await load(true);
  } catch (err) { showError(err); }
});
$("more").addEventListener("click", () => load(false));
load(true);
