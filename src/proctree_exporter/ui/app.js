// proctree-exporter tree page.
//
// Polls the exporter's own JSON API (same origin, so the same TLS and basic auth as
// /metrics) and draws one root's processes by fork lineage. No dependencies and no
// build step: the page must work on air-gapped hosts.
//
// Scale: each poll rebuilds the lineage index in O(members) (a few ms for thousands),
// but only the rows in view exist in the DOM (a virtual scroller), and a row's DOM is
// rewritten only when what it shows changed.
"use strict";
(() => {
  const POLL_MS = 1000;
  const MAX_BACKOFF_MS = 5000;  // while the exporter is unreachable
  const ROW_H = 22;             // px, the --row-h of app.css
  const OVERSCAN = 12;          // rows drawn above and below the view
  const MAX_RECENT = 200;
  const INDENT = 16;            // px per generation
  const LABELS = { orphaned: "orphan", zombie: "zombie", pid_reused: "pid reused", exited: "exited" };
  const PROBLEMS = new Set(["orphaned", "zombie", "pid_reused"]);
  const SIGNALS = { 1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS",
    8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE",
    14: "SIGALRM", 15: "SIGTERM" };

  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  const S = {
    roots: [],
    rootName: null,
    doc: null,
    nodes: new Map(),   // "pid:start_ticks" -> node
    tops: [],
    order: [],          // every node, pre-order
    rows: [],           // the nodes shown, in order
    collapsed: new Set(),
    filter: "",
    problemsOnly: false,
    showExited: true,
    selected: null,     // key
    hovered: null,      // key
    paused: false,
    gen: 0,
    timer: 0,
    polls: 0,
    failures: 0,
    error: null,
    lastOk: 0,
    skewLo: -Infinity,  // server clock minus ours lies in [skewLo, skewHi] (ms)
    skewHi: Infinity,
    recentSig: "",
    recentSeen: new Set(),
    above: new Map(),   // instance key -> {at, list} : its ancestors outside the root
    buildMs: 0,
    renderMs: 0,
  };

  // ---- time ------------------------------------------------------------------------

  // The server's clock, from the Date header (1 s resolution): each response narrows
  // the interval the offset can lie in, so ages agree with the exporter's clock even
  // when the browser runs on another machine.
  function noteServerDate(res, sentAt, gotAt) {
    const t = Date.parse(res.headers.get("Date") || "");
    if (Number.isNaN(t)) return;
    let lo = Math.max(S.skewLo, t - gotAt);
    let hi = Math.min(S.skewHi, t + 1000 - sentAt);
    if (lo > hi) { lo = t - gotAt; hi = t + 1000 - sentAt; }  // a clock was set: start over
    S.skewLo = lo; S.skewHi = hi;
  }
  function serverNow() {
    const skew = Number.isFinite(S.skewLo) && Number.isFinite(S.skewHi) ? (S.skewLo + S.skewHi) / 2 : 0;
    return (Date.now() + skew) / 1000;
  }
  function dur(s) {
    if (!(s >= 0)) s = 0;
    if (s < 10) return s.toFixed(1) + "s";
    s = Math.floor(s);
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + String(s % 60).padStart(2, "0") + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + String(m % 60).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }
  function clock(ts) {
    const d = new Date(ts * 1000);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((x) => String(x).padStart(2, "0")).join(":");
  }
  function exitText(m) {
    if (m.exit_signal !== null && m.exit_signal !== undefined) {
      return "killed by " + (SIGNALS[m.exit_signal] || "signal " + m.exit_signal);
    }
    if (m.exit_code !== null && m.exit_code !== undefined) return "exit code " + m.exit_code;
    return "";
  }

  // ---- fetching ----------------------------------------------------------------------

  async function getJSON(path) {
    const sentAt = Date.now();
    // location.origin: a page opened as http://user:pw@host/ may not fetch URLs with
    // credentials in them; the browser re-sends the cached credentials by itself
    const res = await fetch(location.origin + path, { cache: "no-store", credentials: "same-origin" });
    noteServerDate(res, sentAt, Date.now());
    if (!res.ok) {
      let msg = res.status + " " + res.statusText;
      try { const j = await res.json(); if (j && j.error) msg = j.error; } catch (_) { /* not JSON */ }
      const err = new Error(msg);
      err.status = res.status;
      throw err;
    }
    return res.json();
  }

  async function poll() {
    const gen = ++S.gen;
    clearTimeout(S.timer);
    const name = S.rootName;
    try {
      const [list, doc] = await Promise.all([
        getJSON("/api/v1/roots"),
        name ? getJSON("/api/v1/roots/" + encodeURIComponent(name)) : Promise.resolve(null),
      ]);
      if (gen !== S.gen) return;  // superseded by a newer poll (root changed, resumed)
      S.roots = list.roots || [];
      S.failures = 0;
      S.error = null;
      S.polls += 1;
      S.lastOk = Date.now();
      renderRoots();
      if (doc && name === S.rootName) setDoc(doc);
    } catch (err) {
      if (gen !== S.gen) return;
      S.failures += 1;
      S.error = err.message || String(err);
      if (err.status === 404 && name && name === S.rootName) {
        S.doc = null;
        renderHead();
      }
    }
    renderStatus();
    schedule();
  }

  function schedule() {
    clearTimeout(S.timer);
    if (S.paused || document.hidden) return;
    const wait = S.failures ? Math.min(MAX_BACKOFF_MS, POLL_MS * 2 ** Math.min(S.failures, 3)) : POLL_MS;
    S.timer = setTimeout(poll, wait);
  }

  // ---- the lineage index ---------------------------------------------------------------

  function keyOf(m) { return m.pid + ":" + m.start_ticks; }

  function setDoc(doc) {
    const t0 = performance.now();
    S.doc = doc;
    const nodes = new Map();
    const add = (m, gone) => {
      const k = keyOf(m);
      if (!nodes.has(k)) nodes.set(k, { k, m, gone, kids: [], parent: null, depth: 0, size: 1, bad: 0, hay: null });
    };
    for (const m of doc.members || []) add(m, m.class === "exited");
    for (const m of doc.tombstones || []) add(m, true);
    // a child's fork parent is the listed process with its lineage_ppid that started
    // no later than the child (a pid can be held by an exited parent and a newer stranger)
    const byPid = new Map();
    for (const n of nodes.values()) {
      const same = byPid.get(n.m.pid);
      if (same) same.push(n); else byPid.set(n.m.pid, [n]);
    }
    const tops = [];
    for (const n of nodes.values()) {
      const pp = n.m.lineage_ppid;
      let best = null;
      if (pp !== null && pp !== undefined && pp !== n.m.pid) {
        for (const c of byPid.get(pp) || []) {
          if (c.m.start_ticks <= n.m.start_ticks && (!best || c.m.start_ticks > best.m.start_ticks)) best = c;
        }
      }
      n.parent = best;
      (best ? best.kids : tops).push(n);
    }
    const byStart = (a, b) => a.m.start_ticks - b.m.start_ticks || a.m.pid - b.m.pid;
    tops.sort(byStart);
    const order = [];
    const seen = new Set();
    const walk = (top) => {
      const stack = [top];
      top.depth = 0;
      while (stack.length) {
        const n = stack.pop();
        if (seen.has(n)) continue;
        seen.add(n);
        order.push(n);
        if (n.kids.length > 1) n.kids.sort(byStart);
        for (let i = n.kids.length - 1; i >= 0; i--) {
          n.kids[i].depth = n.depth + 1;
          stack.push(n.kids[i]);
        }
      }
    };
    for (const t of tops) walk(t);
    for (const n of nodes.values()) {
      // a lineage cycle (never seen in practice): cut it and show its members at the top
      if (!seen.has(n)) {
        if (n.parent) n.parent.kids.splice(n.parent.kids.indexOf(n), 1);
        n.parent = null;
        tops.push(n);
        walk(n);
      }
    }
    // subtree sizes and problem counts, children before parents
    for (let i = order.length - 1; i >= 0; i--) {
      const n = order[i];
      n.bad += PROBLEMS.has(n.m.class) ? 1 : 0;
      if (n.parent) { n.parent.size += n.size; n.parent.bad += n.bad; }
    }
    S.nodes = nodes;
    S.tops = tops;
    S.order = order;
    S.buildMs = performance.now() - t0;
    renderHead();
    refresh();
    renderRecent();
    renderDetails();
  }

  // ---- filtering and flattening --------------------------------------------------------

  function hay(n) {
    if (n.hay === null) {
      const m = n.m;
      n.hay = [m.pid, m.comm, m.user, m.class, LABELS[m.class] || "", m.depth === 0 ? "root" : "",
        m.exe || "", m.cmdline || "", m.reason || ""].join(" ").toLowerCase();
    }
    return n.hay;
  }

  function flatten() {
    const terms = S.filter.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const filtering = terms.length > 0 || S.problemsOnly || !S.showExited;
    let keep = null;
    let matches = 0;
    if (filtering) {
      // the matches and their ancestors (for context); collapsing is ignored meanwhile
      keep = new Set();
      for (const n of S.order) {
        if (!S.showExited && n.gone) continue;
        if (S.problemsOnly && !PROBLEMS.has(n.m.class)) continue;
        const h = hay(n);
        if (!terms.every((t) => h.includes(t))) continue;
        matches += 1;
        for (let a = n; a && !keep.has(a); a = a.parent) keep.add(a);
      }
    }
    const rows = [];
    const stack = S.tops.slice().reverse();
    while (stack.length) {
      const n = stack.pop();
      if (keep && !keep.has(n)) continue;
      rows.push(n);
      if (!keep && S.collapsed.has(n.k)) continue;
      for (let i = n.kids.length - 1; i >= 0; i--) stack.push(n.kids[i]);
    }
    S.rows = rows;
    const count = $("match-count");
    if (filtering) count.textContent = matches + " of " + S.order.length + " match";
    else count.textContent = S.order.length + " processes";
  }

  // ---- drawing: the tree ---------------------------------------------------------------

  const pool = [];
  let drawQueued = false;

  function refresh() {
    const t0 = performance.now();
    flatten();
    draw();
    S.renderMs = performance.now() - t0;
  }

  function queueDraw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => { drawQueued = false; draw(); });
  }

  function chainKeys(n) {
    const keys = new Set();
    for (let a = n ? n.parent : null; a; a = a.parent) keys.add(a.k);
    return keys;
  }

  function draw() {
    const scroll = $("tree-scroll");
    const canvas = $("tree-canvas");
    if (!S.doc) return;
    canvas.style.height = Math.max(S.rows.length * ROW_H, ROW_H) + "px";
    const first = Math.max(0, Math.floor(scroll.scrollTop / ROW_H) - OVERSCAN);
    const last = Math.min(S.rows.length, Math.ceil((scroll.scrollTop + scroll.clientHeight) / ROW_H) + OVERSCAN);
    const hovered = S.hovered ? S.nodes.get(S.hovered) : null;
    const anc = chainKeys(hovered);
    const now = serverNow();
    let j = 0;
    for (let i = first; i < last; i++, j++) {
      if (j >= pool.length) { const r = el("div", "row"); r.setAttribute("role", "treeitem"); canvas.appendChild(r); pool.push(r); }
      fillRow(pool[j], S.rows[i], i, now, anc);
    }
    for (; j < pool.length; j++) {
      if (!pool[j].hidden) { pool[j].hidden = true; pool[j]._sig = ""; pool[j]._key = ""; }
    }
    let empty = $("tree-empty");
    if (!S.rows.length) {
      if (!empty) { empty = el("div", "empty"); empty.id = "tree-empty"; canvas.appendChild(empty); }
      empty.textContent = S.order.length ? "Nothing matches the filter." : "No processes in this root right now.";
    } else if (empty) {
      empty.remove();
    }
  }

  function noteOf(m) {
    if (m.reason) return m.reason;
    const parts = [];
    if (m.cmdline) parts.push(m.cmdline);
    else if (m.exe) parts.push(m.exe);
    return parts.join(" ");
  }

  function fillRow(row, n, i, now, anc) {
    const m = n.m;
    const folded = S.collapsed.has(n.k) && !S.filter && !S.problemsOnly && S.showExited;
    const sig = [n.k, m.class, m.reason, m.comm, m.user, n.depth, n.kids.length > 0, folded,
      folded ? n.size + "/" + n.bad : "", n.gone, m.cmdline, m.exe].join("\u0001");
    row.hidden = false;
    row.style.transform = "translateY(" + i * ROW_H + "px)";
    if (row._sig !== sig) {
      row._sig = sig;
      row._key = n.k;
      row.className = "row cls-" + m.class + (n.gone ? " gone" : "");
      row.dataset.key = n.k;
      row.dataset.pid = m.pid;
      row.dataset.class = m.class;
      row.dataset.depth = n.depth;
      row.setAttribute("aria-level", n.depth + 1);
      if (n.kids.length) row.setAttribute("aria-expanded", String(!folded)); else row.removeAttribute("aria-expanded");
      row.replaceChildren();
      const tree = el("span", "c-tree");
      tree.style.paddingLeft = n.depth * INDENT + "px";
      if (n.kids.length) {
        const t = el("button", "tog", folded ? "▶" : "▼");
        t.type = "button";
        t.tabIndex = -1;
        t.setAttribute("aria-label", folded ? "expand" : "collapse");
        tree.appendChild(t);
      } else {
        tree.appendChild(el("span", "tog-sp"));
      }
      tree.appendChild(el("span", "pid", m.pid));
      tree.appendChild(el("span", "comm", m.comm || "?"));
      if (folded) {
        const hidden = n.size - 1;
        tree.appendChild(el("span", "folded", "+" + hidden + (n.bad ? " · " + n.bad + " problem" + (n.bad > 1 ? "s" : "") : "")));
      }
      row.appendChild(tree);
      const cls = el("span", "c-class");
      if (m.depth === 0) cls.appendChild(el("span", "badge b-root", "root"));
      if (LABELS[m.class]) cls.appendChild(el("span", "badge b-" + m.class, LABELS[m.class]));
      row.appendChild(cls);
      row.appendChild(el("span", "c-age"));
      row.appendChild(el("span", "c-user", m.user));
      const note = noteOf(m);
      const noteEl = el("span", "c-note", note);
      if (note) noteEl.title = note;
      row.appendChild(noteEl);
      row.title = "";  // built on hover: the chain of ancestors
    }
    const age = row.children[2];
    const text = n.gone || m.class === "zombie"
      ? (m.exited_at ? dur(now - m.exited_at) + " ago" : "exited")
      : dur(now - m.started_at);
    if (age.textContent !== text) age.textContent = text;
    row.classList.toggle("selected", n.k === S.selected);
    row.classList.toggle("anc", anc.has(n.k));
  }

  function chainText(n) {
    const parts = [];
    for (let a = n; a; a = a.parent) parts.push(a.m.pid + " " + (a.m.comm || "?") + (a.gone ? " (exited)" : ""));
    return "ancestors: " + parts.join(" ← ");
  }

  // ---- drawing: roots, header, status -------------------------------------------------------

  function renderRoots() {
    const box = $("roots");
    const sig = JSON.stringify(S.roots.map((r) => [r.name, r.up, r.members, r.classes])) + S.rootName;
    if (box._sig === sig) return;
    box._sig = sig;
    const table = el("table");
    const head = el("tr");
    for (const h of ["root", "up", "members", "orphan", "zombie"]) head.appendChild(el("th", null, h));
    table.appendChild(head);
    for (const r of S.roots) {
      const tr = el("tr", "root-row" + (r.name === S.rootName ? " selected" : ""));
      tr.dataset.root = r.name;
      const name = el("td", "name");
      const a = el("a", null, r.name);
      a.href = "#root=" + encodeURIComponent(r.name);
      name.appendChild(a);
      tr.appendChild(name);
      tr.appendChild(el("td", r.up ? null : "down", r.up ? "up" : "DOWN"));
      tr.appendChild(el("td", null, r.members));
      const c = r.classes || {};
      tr.appendChild(el("td", c.orphaned ? "n-orphaned" : null, c.orphaned || 0));
      tr.appendChild(el("td", c.zombie ? "n-zombie" : null, c.zombie || 0));
      table.appendChild(tr);
    }
    if (!S.roots.length) {
      const tr = el("tr");
      const td = el("td", "muted", "No roots configured (see config.yaml, roots:).");
      td.colSpan = 5;
      tr.appendChild(td);
      table.appendChild(tr);
    }
    box.replaceChildren(table);
  }

  function renderHead() {
    const head = $("root-head");
    const on = Boolean(S.rootName);
    $("toolbar").hidden = !on || !S.doc;
    $("cols").hidden = !on || !S.doc;
    $("tree-scroll").hidden = !on || !S.doc;
    if (!on) {
      head.replaceChildren(el("p", "hint", "Select a root to see its processes by lineage."));
      return;
    }
    const doc = S.doc;
    if (!doc || doc.name !== S.rootName) {
      head.replaceChildren(el("h2", null, S.rootName),
        el("p", "hint", S.error ? "Cannot show this root: " + S.error : "Loading…"));
      return;
    }
    const h = el("h2");
    h.appendChild(document.createTextNode(doc.name + " "));
    if (!doc.up) h.appendChild(el("span", "badge b-zombie", "down"));
    const facts = el("div", "facts");
    facts.appendChild(el("span", null, "select " + doc.select + " = " + JSON.stringify(doc.match)));
    const inst = (doc.instances || []).map((i) => i.pid + " (" + (i.comm || "?") + ")").join(", ");
    facts.appendChild(el("span", null, "instance" + ((doc.instances || []).length === 1 ? " " : "s ") + (inst || "none")));
    const c = doc.classes || {};
    const live = (c.healthy || 0) + (c.orphaned || 0);  // zombies have exited: not live
    facts.appendChild(el("span", null, live + " live: " + (c.healthy || 0) + " healthy, " +
      (c.orphaned || 0) + " orphaned · " + (c.zombie || 0) + " zombie"));
    facts.appendChild(el("span", null, "spawned " + doc.spawned_total + " · exited " + doc.exited_total +
      " · restarts " + doc.restarts_total));
    const api = el("span");
    const a1 = el("a", null, "JSON");
    a1.href = "/api/v1/roots/" + encodeURIComponent(doc.name);
    const a2 = el("a", null, "tree JSON");
    a2.href = "/api/v1/tree?root=" + encodeURIComponent(doc.name);
    api.append(a1, " · ", a2);
    facts.appendChild(api);
    const parts = [h, facts];
    if (doc.truncated) {
      const listed = (doc.members || []).filter((m) => m.class === "healthy" || m.class === "orphaned").length;
      parts.push(el("p", "warn", "Listing capped: " + listed + " of " + live +
        " live members shown (raise max_members for this root)."));
    }
    for (const w of doc.warnings || []) parts.push(el("p", "warn", w));
    head.replaceChildren(...parts);
  }

  function renderStatus() {
    const st = $("status");
    st.dataset.polls = S.polls;
    st.className = "status " + (S.error ? "error" : S.paused ? "paused" : "live");
    if (S.error) st.textContent = "cannot reach the exporter: " + S.error + " (retrying)";
    else if (S.paused) st.textContent = "paused · last update " + clock(S.lastOk / 1000);
    else st.textContent = "live · updated " + clock(S.lastOk / 1000);
    st.title = "index " + S.buildMs.toFixed(1) + " ms · flatten+draw " + S.renderMs.toFixed(1) + " ms · " +
      S.order.length + " processes";
    $("pause").textContent = S.paused ? "Resume" : "Pause";
  }

  // ---- drawing: recent changes ---------------------------------------------------------------

  function renderRecent() {
    const doc = S.doc;
    const list = $("recent");
    const items = [];
    for (const r of doc.recent || []) {
      const ts = r.event === "added" ? r.started_at : (r.exited_at || r.started_at);
      items.push({ ts, kind: r.event, pid: r.pid, st: r.start_ticks, comm: r.comm,
        text: r.event === "added" ? "joined" : (r.reason || exitText(r) || "left") });
    }
    for (const e of doc.events || []) {
      const text = e.kind === "class" ? e.old_class + " → " + e.new_class + ": " + e.reason
        : e.kind === "action" ? "action " + e.outcome + ": " + e.reason : e.reason;
      items.push({ ts: e.ts, kind: e.kind, pid: e.pid, st: e.start_ticks, comm: e.comm, text });
    }
    items.sort((a, b) => b.ts - a.ts);
    items.length = Math.min(items.length, MAX_RECENT);
    const keyed = items.map((it) => [it.kind, it.pid, it.st, it.text].join(":"));
    const sig = S.rootName + "\n" + keyed.join("\n");
    if (sig === S.recentSig) return;
    const firstDraw = S.recentSig.split("\n")[0] !== S.rootName;
    S.recentSig = sig;
    const lis = items.map((it, i) => {
      const li = el("li");
      if (!firstDraw && !S.recentSeen.has(keyed[i])) li.classList.add("fresh");
      li.dataset.key = it.pid + ":" + it.st;
      li.appendChild(el("span", "ts", clock(it.ts)));
      const sym = { added: "+ added", removed: "− exited", class: "! class", restart: "↻ restart", action: "⚡ action" };
      li.appendChild(el("span", "k-" + it.kind, sym[it.kind] || it.kind));
      li.appendChild(el("span", "what", it.pid + " " + (it.comm || "?") + " — " + it.text));
      return li;
    });
    S.recentSeen = new Set(keyed);
    list.replaceChildren(...lis);
    if (!items.length) list.replaceChildren(el("li", "muted", "No changes yet."));
  }

  // ---- drawing: the selected process and its ancestors -------------------------------------------

  function renderDetails() {
    const box = $("details");
    const n = S.selected ? S.nodes.get(S.selected) : null;
    if (!S.selected) {
      box.replaceChildren(el("p", "hint", "Click a process to see its details and its chain of ancestors."));
      return;
    }
    if (!n) {
      box.replaceChildren(el("p", "hint", "Process " + S.selected.split(":")[0] + " is no longer listed (its tombstone expired)."));
      return;
    }
    const m = n.m;
    const now = serverNow();
    const h = el("h3");
    h.append(el("span", "pid", m.pid), el("span", null, m.comm || "?"));
    if (m.depth === 0) h.appendChild(el("span", "badge b-root", "root"));
    if (LABELS[m.class]) h.appendChild(el("span", "badge b-" + m.class, LABELS[m.class]));
    const dl = el("dl");
    const row = (k, v, code) => {
      if (v === null || v === undefined || v === "") return;
      dl.appendChild(el("dt", null, k));
      const dd = el("dd");
      dd.appendChild(code ? el("code", null, v) : document.createTextNode(String(v)));
      dl.appendChild(dd);
    };
    row("class", m.class + (m.reason ? ": " + m.reason : ""));
    row("identity", "pid " + m.pid + ", start " + m.start_ticks + " ticks");
    row("user", m.user);
    row("started", new Date(m.started_at * 1000).toLocaleString() + " (" + dur(now - m.started_at) + " ago)");
    if (m.exited_at) row("exited", new Date(m.exited_at * 1000).toLocaleString() + " (" + dur(now - m.exited_at) + " ago, ran " + dur(m.exited_at - m.started_at) + ")");
    row("exit", exitText(m));
    row("fork parent", m.lineage_ppid);
    if (!n.gone) row("current parent", m.ppid + (m.lineage_ppid !== null && m.ppid !== m.lineage_ppid ? " (reparented)" : ""));
    row("generation", m.depth + " below the instance");
    row("exe", m.exe, true);
    row("command line", m.cmdline, true);
    const chainBox = el("div");
    chainBox.appendChild(el("h2", null, "Ancestors"));
    const ol = el("ol", "chain");
    const inRoot = [];
    for (let a = n; a; a = a.parent) inRoot.push(a);
    const top = inRoot[inRoot.length - 1];
    const above = S.above.get(top.k);
    if (above && above.list) {
      for (const a of above.list.slice().reverse()) {
        const li = el("li", "outside" + (a.exited ? " gone" : ""), a.pid + " " + (a.comm || "?") + " · " + a.user);
        ol.appendChild(li);
      }
      if (above.truncated) ol.prepend(el("li", "sep", "… more ancestors not shown"));
      ol.appendChild(el("li", "sep", "root " + S.rootName + " starts here"));
    } else if (top.gone) {
      ol.appendChild(el("li", "sep", "above: unknown (the process at the top of this root exited)"));
    } else if (above && above.error) {
      ol.appendChild(el("li", "sep", "above: " + above.error));
    }
    for (const a of inRoot.reverse()) {
      const li = el("li", "in-root" + (a.gone ? " gone" : "") + (a === n ? " here" : ""));
      const link = el("a", null, a.m.pid + " " + (a.m.comm || "?"));
      link.href = "#";
      link.dataset.key = a.k;
      li.appendChild(link);
      if (LABELS[a.m.class]) { li.append(" "); li.appendChild(el("span", "badge b-" + a.m.class, LABELS[a.m.class])); }
      ol.appendChild(li);
    }
    chainBox.appendChild(ol);
    box.replaceChildren(h, dl, chainBox);
    if (!top.gone) loadAbove(top);
  }

  // The ancestors of the root's top process, outside the root, from the exporter's tree.
  async function loadAbove(top) {
    const have = S.above.get(top.k);
    if (have && (have.pending || Date.now() - have.at < 10000)) return;
    S.above.set(top.k, { at: Date.now(), pending: true, list: have ? have.list : null });
    let entry;
    try {
      const doc = await getJSON("/api/v1/ancestors?root=" + encodeURIComponent(S.rootName) + "&pid=" + top.m.pid +
        "&start_ticks=" + top.m.start_ticks);
      entry = { at: Date.now(), list: doc.ancestors, truncated: doc.truncated };
    } catch (err) {
      entry = { at: Date.now(), list: null, error: err.message };
    }
    S.above.set(top.k, entry);
    const n = S.selected ? S.nodes.get(S.selected) : null;
    let t = n;
    while (t && t.parent) t = t.parent;
    if (t && t.k === top.k) renderDetails();
  }

  // ---- interaction --------------------------------------------------------------------------------

  function selectRoot(name) {
    if (name === S.rootName) return;
    S.rootName = name;
    S.doc = null;
    S.nodes = new Map();
    S.order = [];
    S.rows = [];
    S.selected = null;
    S.hovered = null;
    S.collapsed.clear();
    S.recentSig = "";
    $("tree-scroll").scrollTop = 0;
    $("recent").replaceChildren();
    renderHead();
    renderDetails();
    $("roots")._sig = "";
    renderRoots();
    draw();
    poll();
  }

  function select(key, reveal) {
    S.selected = key;
    renderDetails();
    const n = S.nodes.get(key);
    if (n && reveal) {
      // unfold its ancestors and scroll it into view
      let changed = false;
      for (let a = n.parent; a; a = a.parent) if (S.collapsed.delete(a.k)) changed = true;
      if (changed) flatten();
      const i = S.rows.indexOf(n);
      const sc = $("tree-scroll");
      if (i >= 0 && (i * ROW_H < sc.scrollTop || (i + 1) * ROW_H > sc.scrollTop + sc.clientHeight)) {
        sc.scrollTop = Math.max(0, i * ROW_H - sc.clientHeight / 2);
      }
    }
    draw();
  }

  function toggle(key, fold) {
    const on = fold === undefined ? !S.collapsed.has(key) : fold;
    if (on) S.collapsed.add(key); else S.collapsed.delete(key);
    refresh();
  }

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    return params.get("root");
  }

  function wire() {
    const scroll = $("tree-scroll");
    scroll.addEventListener("scroll", queueDraw, { passive: true });
    window.addEventListener("resize", queueDraw);
    $("tree-canvas").addEventListener("click", (ev) => {
      const row = ev.target.closest(".row");
      if (!row || !row._key) return;
      if (ev.target.closest(".tog")) toggle(row._key);
      else select(row._key, false);
      scroll.focus({ preventScroll: true });
    });
    $("tree-canvas").addEventListener("mouseover", (ev) => {
      const row = ev.target.closest(".row");
      const key = row ? row._key : null;
      if (key === S.hovered) return;
      S.hovered = key;
      const n = key ? S.nodes.get(key) : null;
      if (row && n) row.title = chainText(n);
      draw();
    });
    $("tree-canvas").addEventListener("mouseleave", () => { S.hovered = null; draw(); });
    scroll.addEventListener("keydown", (ev) => {
      if (!S.rows.length) return;
      let i = S.selected ? S.rows.findIndex((n) => n.k === S.selected) : -1;
      const n = i >= 0 ? S.rows[i] : null;
      if (ev.key === "ArrowDown") i = Math.min(S.rows.length - 1, i + 1);
      else if (ev.key === "ArrowUp") i = Math.max(0, i - 1);
      else if (ev.key === "ArrowLeft" && n) {
        if (n.kids.length && !S.collapsed.has(n.k)) { toggle(n.k, true); ev.preventDefault(); return; }
        if (n.parent) i = S.rows.indexOf(n.parent);
      } else if (ev.key === "ArrowRight" && n && n.kids.length) { toggle(n.k, false); ev.preventDefault(); return; }
      else return;
      ev.preventDefault();
      if (i >= 0) select(S.rows[i].k, true);
    });
    const filter = $("filter");
    filter.addEventListener("input", () => { S.filter = filter.value; scroll.scrollTop = 0; refresh(); });
    filter.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") { filter.value = ""; S.filter = ""; refresh(); }
    });
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "/" && document.activeElement !== filter) { ev.preventDefault(); filter.focus(); }
    });
    $("problems").addEventListener("change", (ev) => { S.problemsOnly = ev.target.checked; refresh(); });
    $("exited").addEventListener("change", (ev) => { S.showExited = ev.target.checked; refresh(); });
    $("collapse-all").addEventListener("click", () => {
      // fold every process with children below the top: the instances and their children stay
      for (const n of S.order) if (n.kids.length && n.depth >= 1) S.collapsed.add(n.k);
      refresh();
    });
    $("expand-all").addEventListener("click", () => { S.collapsed.clear(); refresh(); });
    $("details").addEventListener("click", (ev) => {
      const a = ev.target.closest("a[data-key]");
      if (!a) return;
      ev.preventDefault();
      select(a.dataset.key, true);
    });
    $("recent").addEventListener("click", (ev) => {
      const li = ev.target.closest("li[data-key]");
      if (li && S.nodes.has(li.dataset.key)) select(li.dataset.key, true);
    });
    $("roots").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr[data-root]");
      if (!tr) return;
      ev.preventDefault();
      location.hash = "root=" + encodeURIComponent(tr.dataset.root);
    });
    window.addEventListener("hashchange", () => selectRoot(readHash()));
    const pause = $("pause");
    pause.hidden = false;
    pause.addEventListener("click", () => {
      S.paused = !S.paused;
      if (S.paused) clearTimeout(S.timer); else poll();
      renderStatus();
    });
    document.addEventListener("visibilitychange", () => { if (!document.hidden && !S.paused) poll(); });
    // the ages tick between polls too
    setInterval(() => { if (S.doc && !S.paused) draw(); }, 1000);
  }

  function start() {
    wire();
    const name = readHash();
    $("status").textContent = "connecting…";
    if (name) selectRoot(name); else poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
