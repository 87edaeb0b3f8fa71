// The image-builder web console: a hash-routed page over the /v1 API. The key lives in this
// tab's sessionStorage and goes out as the bearer header; nothing is shown without it. Data is
// only ever put into the page as text (never as HTML).

const KEY = "image-builder.api-key";
const POLL_MS = 2000;
// Repositories and the registry change with finished builds only, and a registry's catalog is
// read whole for each listing: refreshed less often.
const SLOW_POLL_MS = 15000;
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];

const view = document.getElementById("view");
// Each route's timers and streams, stopped when the route changes.
let current = new AbortController();

class Unauthorized extends Error {}

function key() {
  return sessionStorage.getItem(KEY);
}

// A request with the key; 401 signs out. Returns the Response for non-JSON bodies.
async function api(path, { method = "GET", body, signal, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${key()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  if (response.status === 401) {
    signOut("The API key was refused; enter it again.");
    throw new Unauthorized();
  }
  if (raw) return response;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data?.error?.message ?? `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return data;
}

// el("tag", {attr: value, class: "x"}, child, "text", ...): children are nodes or text.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function stateBadge(state, attrs = {}) {
  return el("span", { class: `state state-${state}`, ...attrs }, state);
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return el("time", { datetime: iso, title: iso }, date.toLocaleString());
}

function short(commit) {
  return commit ? el("code", { title: commit }, commit.slice(0, 12)) : "";
}

function errorBox(message) {
  return el("p", { class: "error", role: "alert" }, message);
}

// Runs `tick` now and every `every` ms until the route changes; a failing tick shows its error.
function poll(tick, status, every = POLL_MS) {
  const { signal } = current;
  const loop = async () => {
    if (signal.aborted) return;
    try {
      await tick(signal);
      status.textContent = "";
    } catch (e) {
      if (e instanceof Unauthorized || signal.aborted) return;
      status.textContent = `Could not refresh: ${e.message}`;
    }
    if (!signal.aborted) setTimeout(loop, every);
  };
  loop();
}

// ---- sign in / out ----

function showLogin(message = "") {
  document.getElementById("nav").hidden = true;
  view.replaceChildren();
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message;
  document.getElementById("api-key").focus();
}

function signOut(message = "") {
  current.abort();
  sessionStorage.removeItem(KEY);
  showLogin(message);
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("api-key");
  const candidate = input.value.trim();
  if (!candidate) return;
  // Checked with a read every key may do before it is kept.
  const response = await fetch("/v1/builds?limit=1", {
    headers: { Authorization: `Bearer ${candidate}` },
    cache: "no-store",
  }).catch(() => null);
  if (!response || !response.ok) {
    const reason = response?.status === 401 ? "That API key is not valid." : "The server did not answer.";
    document.getElementById("login-error").textContent = reason;
    return;
  }
  sessionStorage.setItem(KEY, candidate);
  input.value = "";
  document.getElementById("login-error").textContent = "";
  route();
}

// ---- builds ----

function filtersOf(params) {
  const filters = {};
  for (const name of ["repo", "ref", "state", "user_id"]) {
    const value = params.get(name);
    if (value) filters[name] = value;
  }
  return filters;
}

function buildsView(params) {
  const filters = filtersOf(params);
  const field = (name, label, control) =>
    el("div", { class: "field" }, el("label", { for: `filter-${name}` }, label), control);
  const text = (name) => el("input", { id: `filter-${name}`, name, value: filters[name] ?? "" });
  const state = el(
    "select",
    { id: "filter-state", name: "state" },
    el("option", { value: "" }, "any"),
    STATES.map((s) => el("option", { value: s, selected: filters.state === s }, s)),
  );
  const form = el(
    "form",
    { class: "filters", "aria-label": "Filter builds", onsubmit: applyFilters },
    field("repo", "Repository", text("repo")),
    field("ref", "Ref", text("ref")),
    field("state", "State", state),
    field("user_id", "User", text("user_id")),
    el("button", { type: "submit" }, "Filter"),
    el("a", { href: "#/builds", class: "button-like" }, "Clear"),
  );
  const rows = el("tbody");
  const status = el("p", { class: "status", role: "status" });
  view.replaceChildren(
    el("h2", {}, "Builds"),
    form,
    status,
    el(
      "table",
      { class: "list", "aria-label": "Builds, newest first (refreshed every 2 seconds)" },
      el("thead", {}, el("tr", {}, ["Build", "Repository", "Ref", "State", "User", "Commit", "Created"].map((h) => el("th", { scope: "col" }, h)))),
      rows,
    ),
  );
  const query = new URLSearchParams({ ...filters, limit: "50" });
  poll(async (signal) => {
    const page = await api(`/v1/builds?${query}`, { signal });
    rows.replaceChildren(
      ...page.builds.map((b) =>
        el(
          "tr",
          { "data-build": b.id },
          el("td", {}, el("a", { href: `#/builds/${encodeURIComponent(b.id)}` }, b.id)),
          el("td", {}, b.repo ?? ""),
          el("td", {}, b.ref ?? ""),
          el("td", {}, stateBadge(b.state)),
          el("td", {}, b.user_id ?? ""),
          el("td", {}, short(b.commit)),
          el("td", {}, when(b.created_at)),
        ),
      ),
    );
    if (page.builds.length === 0) {
      rows.append(el("tr", {}, el("td", { colspan: "7" }, "No builds match.")));
    }
  }, status);
}

function applyFilters(event) {
  event.preventDefault();
  const data = new FormData(event.target);
  const params = new URLSearchParams();
  for (const [name, value] of data) if (String(value).trim()) params.set(name, String(value).trim());
  location.hash = `#/builds${params.size ? `?${params}` : ""}`;
}

function detailRow(label, value, attrs = {}) {
  return [el("dt", {}, label), el("dd", attrs, value ?? "")];
}

function buildView(id) {
  const { signal } = current;
  const title = el("h2", {}, `Build ${id}`);
  const details = el("dl", { class: "details" });
  const history = el("tbody");
  const status = el("p", { class: "status", role: "status" });
  const actionStatus = el("p", { class: "status", role: "status", id: "action-status" });
  const cancel = el("button", { type: "button", id: "cancel", onclick: () => act("cancel") }, "Cancel build");
  const rebuild = el("button", { type: "button", id: "rebuild", onclick: () => act("rebuild") }, "Rebuild");
  const log = el("pre", { id: "log", class: "log", role: "log", "aria-live": "polite", "aria-label": "Build log", tabindex: "0" });
  const logStatus = el("p", { class: "status", id: "log-status", role: "status" }, "Connecting to the log…");
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/builds" }, "← All builds")),
    title,
    status,
    el("div", { class: "actions" }, cancel, rebuild, actionStatus),
    details,
    el("h3", {}, "State history"),
    el("table", { class: "list" }, el("thead", {}, el("tr", {}, ["State", "Attempt", "Host", "At"].map((h) => el("th", { scope: "col" }, h)))), history),
    el("h3", { id: "log-title" }, "Log"),
    logStatus,
    log,
  );

  let final = false;
  async function act(what) {
    actionStatus.textContent = what === "cancel" ? "Cancelling…" : "Starting a rebuild…";
    try {
      const answer = await api(`/v1/builds/${encodeURIComponent(id)}/${what}`, { method: "POST", body: {} });
      if (what === "rebuild") {
        location.hash = `#/builds/${encodeURIComponent(answer.id)}`;
        return;
      }
      actionStatus.textContent = answer.cancelling ? "Cancel requested; the build is stopping." : `Build ${answer.state}.`;
    } catch (e) {
      if (!(e instanceof Unauthorized)) actionStatus.textContent = `Could not ${what}: ${e.message}`;
    }
  }

  poll(async (pollSignal) => {
    if (final) return;
    const b = await api(`/v1/builds/${encodeURIComponent(id)}`, { signal: pollSignal });
    final = FINAL.has(b.state);
    cancel.hidden = final;
    const pull = b.image && b.digest ? `podman pull ${b.image}@${b.digest}` : "";
    details.replaceChildren(
      ...detailRow("State", stateBadge(b.state, { id: "build-state" }), { "aria-live": "polite" }),
      ...detailRow("Repository", b.repo),
      ...detailRow("Ref", b.ref),
      ...detailRow("User", b.user_id),
      ...detailRow("Commit", b.commit ? el("code", {}, b.commit) : ""),
      ...detailRow("Image", b.image ? el("code", {}, b.image) : ""),
      ...detailRow("Digest", b.digest ? el("code", {}, b.digest) : ""),
      ...detailRow("Tags", b.tags?.length ? b.tags.join(", ") : ""),
      ...detailRow("Pull", pull ? el("code", { id: "pull" }, pull) : ""),
      ...detailRow("Attempts", b.attempts),
      // How the image was made and why (cached, incremental or full), as image.updated said.
      ...(b.how ? detailRow("How", b.how, { id: "how" }) : []),
      ...(b.why ? detailRow("Why", b.why, { id: "why" }) : []),
      ...(b.rebuild_of ? detailRow("Rebuild of", el("a", { href: `#/builds/${encodeURIComponent(b.rebuild_of)}` }, b.rebuild_of)) : []),
      ...(b.error ? detailRow("Error", `${b.fault ? `${b.fault} fault: ` : ""}${b.error}`, { class: "error" }) : []),
    );
    history.replaceChildren(
      ...(b.states ?? []).map((s) =>
        el("tr", {}, el("td", {}, stateBadge(s.state)), el("td", {}, s.attempt), el("td", {}, s.host ?? ""), el("td", {}, when(s.at))),
      ),
    );
  }, status);

  followLog(id, log, logStatus, signal);
}

// Streams the log while the build runs (the server ends the stream after the final state).
async function followLog(id, log, logStatus, signal) {
  const decoder = new TextDecoder();
  try {
    const response = await api(`/v1/builds/${encodeURIComponent(id)}/logs?follow=true`, { signal, raw: true });
    if (!response.ok) {
      logStatus.textContent = `The log is not available (${response.status}).`;
      return;
    }
    logStatus.textContent = "Following the log live.";
    const reader = response.body.getReader();
    for (;;) {
      const { value, done } = await reader.read();
      const text = done ? decoder.decode() : decoder.decode(value, { stream: true });
      if (text) {
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.append(document.createTextNode(text));
        if (atBottom) log.scrollTop = log.scrollHeight;
      }
      if (done) break;
    }
    logStatus.textContent = "The build has ended; this is its whole log.";
  } catch (e) {
    if (e instanceof Unauthorized || signal.aborted) return;
    logStatus.textContent = `The log stream broke: ${e.message}. Reload the page to read it again.`;
  }
}

// ---- repositories ----

function reposView() {
  const rows = el("tbody");
  const status = el("p", { class: "status", role: "status" });
  view.replaceChildren(
    el("h2", {}, "Repositories"),
    status,
    el("table", { class: "list" }, el("thead", {}, el("tr", {}, ["Repository", "Builds", "Last build"].map((h) => el("th", { scope: "col" }, h)))), rows),
  );
  poll(async (signal) => {
    const { repos } = await api("/v1/repos", { signal });
    rows.replaceChildren(
      ...repos.map((r) =>
        el("tr", {}, el("td", {}, el("a", { href: `#/repos/${encodeURIComponent(r.name)}` }, r.name)), el("td", {}, r.builds), el("td", {}, when(r.last_build_at))),
      ),
    );
    if (repos.length === 0) rows.append(el("tr", {}, el("td", { colspan: "3" }, "No repositories yet.")));
  }, status, SLOW_POLL_MS);
}

function versionsView(name) {
  const rows = el("tbody");
  const status = el("p", { class: "status", role: "status" });
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/repos" }, "← All repositories")),
    el("h2", {}, `Repository ${name}`),
    el("p", {}, "The newest image of each ref."),
    status,
    el("table", { class: "list" }, el("thead", {}, el("tr", {}, ["Ref", "Commit", "Pull", "Build", "Finished"].map((h) => el("th", { scope: "col" }, h)))), rows),
  );
  poll(async (signal) => {
    const path = `/v1/repos/${encodeURIComponent(name)}/versions?newest_per_ref=true`;
    const { versions } = await api(path, { signal });
    rows.replaceChildren(
      ...versions.map((v) =>
        el(
          "tr",
          {},
          el("td", {}, v.ref ?? ""),
          el("td", {}, short(v.commit)),
          el("td", {}, v.image && v.digest ? el("code", {}, `podman pull ${v.image}@${v.digest}`) : ""),
          el("td", {}, el("a", { href: `#/builds/${encodeURIComponent(v.build_id)}` }, v.build_id)),
          el("td", {}, when(v.finished_at)),
        ),
      ),
    );
  }, status, SLOW_POLL_MS);
}

// ---- registry ----

function registryView() {
  const rows = el("tbody");
  const status = el("p", { class: "status", role: "status" });
  const heading = el("p", {});
  view.replaceChildren(
    el("h2", {}, "Registry"),
    heading,
    status,
    el("table", { class: "list" }, el("thead", {}, el("tr", {}, ["Image", "Namespace"].map((h) => el("th", { scope: "col" }, h)))), rows),
  );
  poll(async (signal) => {
    const { registry, repositories } = await api("/v1/registry/repositories", { signal });
    heading.textContent = `Images in ${registry} that this key may see.`;
    rows.replaceChildren(
      ...repositories.map((r) =>
        el("tr", {}, el("td", {}, el("a", { href: `#/registry/${encodeURIComponent(r.name)}` }, r.name)), el("td", {}, r.namespace ?? "")),
      ),
    );
    if (repositories.length === 0) rows.append(el("tr", {}, el("td", { colspan: "2" }, "No images.")));
  }, status, SLOW_POLL_MS);
}

function tagsView(name) {
  const rows = el("tbody");
  const status = el("p", { class: "status", role: "status" });
  const note = el("p", {});
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/registry" }, "← All images")),
    el("h2", {}, `Image ${name}`),
    status,
    el("table", { class: "list" }, el("thead", {}, el("tr", {}, ["Tag", "Pull"].map((h) => el("th", { scope: "col" }, h)))), rows),
    note,
  );
  poll(async (signal) => {
    const path = `/v1/registry/repositories/${name.split("/").map(encodeURIComponent).join("/")}/tags`;
    const answer = await api(path, { signal });
    rows.replaceChildren(...answer.tags.map((t) => el("tr", {}, el("td", {}, t.tag), el("td", {}, el("code", {}, t.pull)))));
    note.textContent = answer.internal_tags ? `Also ${answer.internal_tags} tags that image-builder keeps for itself (build keys ib-…, artifact referrers sha256-…).` : "";
  }, status, SLOW_POLL_MS);
}

// ---- routing ----

function route(event) {
  current.abort();
  current = new AbortController();
  if (!key()) {
    showLogin();
    return;
  }
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  const hash = location.hash.replace(/^#/, "") || "/builds";
  const [path, search = ""] = hash.split("?");
  const params = new URLSearchParams(search);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const [section, ...rest] = parts;
  const name = rest.join("/");
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === `#/${section}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (section === "builds" && name) buildView(name);
  else if (section === "repos" && name) versionsView(name);
  else if (section === "repos") reposView();
  else if (section === "registry" && name) tagsView(name);
  else if (section === "registry") registryView();
  else buildsView(params);
  const heading = view.querySelector("h2");
  document.title = `${heading?.textContent ?? "Console"} · image-builder`;
  // After following a link, keyboard and screen reader users land on the new page's heading.
  if (event && heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

document.getElementById("login-form").addEventListener("submit", signIn);
document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", route);
route();
