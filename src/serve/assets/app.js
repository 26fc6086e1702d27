// megaplan serve: renders the snapshot the server pushes (server-sent
// events); every text goes in through textContent, never as HTML, except the
// drawing, which the server built and escaped.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const withToken = (path) => (token ? path + "?token=" + encodeURIComponent(token) : path);
const $ = (id) => document.getElementById(id);
let updates = 0;
// When each VM entered its state (ms since the epoch): in memory, so a reload starts over.
const since = new Map();
document.documentElement.dataset.loaded = String(Date.now());

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

function list(v) {
  return Array.isArray(v) ? v.join(", ") : String(v ?? "");
}

function row(...cells) {
  return el("tr", {}, ...cells.map((c) => el("td", {}, c)));
}

// A labelled row of a VM's table: the value cell carries the label as data-key.
function field(key, value) {
  return el("tr", {}, el("td", {}, key), el("td", { "data-key": key }, value));
}

function renderVm(vm) {
  const d = el("div", { class: "vm", id: "vm-" + vm.name, "data-vm": vm.name, "data-state": vm.state });
  d.append(el("h3", {}, vm.name, " ", el("span", { class: "state" }, vm.state)));
  const t = el("table", {});
  const tags = Object.entries(vm.tags || {}).map(([k, v]) => k + "=" + v).join(", ");
  t.append(
    field("uuid", vm.uuid),
    field("pid", vm.pid ?? ""),
    field("networks", list(vm.networks)),
    field("taps", list(vm.tap)),
    field("bridges", list(vm.bridge)),
    field("macs", list(vm.mac)),
    field("addresses", list(vm.ip)),
    field("memory / vcpus", vm.memory + " MiB / " + vm.vcpus),
    field("tags", tags),
    field("cc steps done", vm.cc),
  );
  // The host it runs on, when the provider records one (minimega's node).
  if (vm.host) t.prepend(field("host", vm.host));
  d.append(t);
  for (const s of vm.steps || []) {
    const failed = s.exit !== null && s.exit !== "0";
    const det = el("details", { class: "step" + (failed ? " failed" : ""), "data-step": s.address });
    det.append(el("summary", {}, s.address + ": " + s.action + " — " + s.status));
    if (s.stdout) det.append(el("pre", { class: "stdout" }, s.stdout));
    if (s.stderr) det.append(el("pre", { class: "stderr" }, s.stderr));
    d.append(det);
  }
  if (vm.serial) {
    const det = el("details", { class: "serial" });
    det.append(el("summary", {}, "serial console (tail)"), el("pre", {}, vm.serial));
    d.append(det);
  }
  return d;
}

function when(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}

// The last `megaplan test`/`check` run (checks.json): per check its result,
// message and when; what it ran and saw in a <details>.
function renderChecks(report) {
  const body = $("checks").tBodies[0];
  const summary = $("checks-summary");
  $("checks").hidden = !report || !!report.error;
  if (!report) {
    summary.textContent = "No checks have run: megaplan test or megaplan check writes the results shown here.";
    body.replaceChildren();
    return;
  }
  if (report.error) {
    summary.textContent = "cannot read the check results: " + report.error;
    body.replaceChildren();
    return;
  }
  summary.textContent = report.passed + " passed, " + report.failed + " failed — run at " +
    when(report.started) + " (" + report.duration_ms + " ms)";
  body.replaceChildren(...(report.results || []).map((r) => {
    const det = el("details", {}, el("summary", {}, r.message));
    const text = [r.command, r.exit !== undefined ? "exit " + r.exit : "",
      r.attempts > 1 ? r.attempts + " attempts" : "",
      r.frames !== undefined ? r.matched + " of " + r.frames + " frames matched" : ""].filter(Boolean).join("\n");
    det.append(el("pre", {}, text));
    if (r.stdout) det.append(el("pre", { class: "stdout" }, r.stdout));
    if (r.stderr) det.append(el("pre", { class: "stderr" }, r.stderr));
    if (r.excerpt && r.excerpt.length) det.append(el("pre", { class: "excerpt" }, r.excerpt.join("\n")));
    const tr = el("tr", { class: "check " + (r.passed ? "passed" : "failed"), "data-check": r.name });
    tr.append(el("td", { class: "result" }, r.passed ? "pass" : "FAIL"), el("td", {}, r.name),
      el("td", {}, det), el("td", {}, when(report.started) + " (" + r.duration_ms + " ms)"));
    return tr;
  }));
}

function renderCaptures(captures) {
  $("captures-none").hidden = captures.length > 0;
  $("captures").hidden = captures.length === 0;
  $("captures").tBodies[0].replaceChildren(...captures.map((c) => {
    const link = c.bytes === null || c.bytes === undefined
      ? "not recorded yet"
      : el("a", { href: withToken(c.download), download: c.name + ".pcap", class: "download" }, c.name + ".pcap");
    const tr = row(c.name, c.records, c.recorder ? "pid " + c.recorder : "stopped", c.bytes ?? "", link);
    tr.dataset.capture = c.name;
    return tr;
  }));
}

function render(snap) {
  updates += 1;
  document.body.dataset.updates = String(updates);
  $("experiment").textContent = snap.experiment || "";
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  const err = $("error");
  err.hidden = !snap.error;
  err.textContent = snap.error || "";
  if (snap.error) return;
  if (typeof snap.svg === "string") $("topology").innerHTML = snap.svg;
  $("plan").textContent = snap.plan || "";
  renderChecks(snap.checks);
  renderCaptures(snap.captures || []);
  const nets = $("networks").tBodies[0];
  nets.replaceChildren(...(snap.networks || []).map((n) => row(n.name, n.bridge, n.host_address ?? "")));
  const mirrors = $("mirrors").tBodies[0];
  mirrors.replaceChildren(...(snap.mirrors || []).map((m) => row(m.address, m.source, m.dest, m.direction)));
  const open = new Set([...document.querySelectorAll("details[open]")].map((d) => d.dataset.step || d.parentElement.id + "/serial"));
  $("vms").replaceChildren(...(snap.vms || []).map(renderVm));
  for (const d of document.querySelectorAll("details")) {
    if (open.has(d.dataset.step || d.parentElement.id + "/serial")) d.open = true;
  }
  for (const vm of snap.vms || []) {
    const prev = since.get(vm.name);
    if (!prev || prev.state !== vm.state) since.set(vm.name, { state: vm.state, at: Date.now() });
    const d = $("vm-" + vm.name);
    if (d) d.dataset.since = String(since.get(vm.name).at);
  }
}

function connect() {
  const live = $("live");
  const es = new EventSource(withToken("events"));
  es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  es.onmessage = (e) => render(JSON.parse(e.data));
  es.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
}

fetch(withToken("snapshot.json"))
  .then((r) => r.json())
  .then(render)
  .catch((e) => { $("error").hidden = false; $("error").textContent = "cannot load: " + e; })
  .finally(connect);

// --allow-actions: the panel is on the page only then. Each action is a POST
// with the token in its Authorization header (the server refuses it in the
// query) and a JSON body; the reply is the command's exit code and output.
async function act(path, body, what) {
  const out = $("action-output");
  out.hidden = false;
  out.textContent = what + "…";
  for (const b of document.querySelectorAll("#actions-section button")) b.disabled = true;
  try {
    const r = await fetch(path, {
      method: "POST",
      headers: { "Authorization": "Bearer " + (token || ""), "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) {
      out.textContent = what + ": " + r.status + " " + text;
      return;
    }
    const res = JSON.parse(text);
    out.textContent = what + " exited " + res.exit + "\n" + res.stdout + (res.stderr ? "\n-- stderr\n" + res.stderr : "");
  } catch (e) {
    out.textContent = what + ": " + e;
  } finally {
    for (const b of document.querySelectorAll("#actions-section button")) b.disabled = false;
  }
}

if ($("actions-section")) {
  $("action-apply").onclick = () => {
    if (confirm("Apply the experiment now?")) act("actions/apply", {}, "apply");
  };
  $("action-destroy").onclick = () => {
    if (confirm("Destroy everything the experiment created?")) act("actions/destroy", {}, "destroy");
  };
  $("action-cc").onclick = () => {
    const command = $("cc-command").value;
    const filter = $("cc-filter").value.trim();
    act("actions/cc-exec", { command: [command], filter: filter ? [filter] : [] }, "cc exec");
  };
}
