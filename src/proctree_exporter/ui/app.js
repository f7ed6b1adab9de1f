// proctree-exporter tree page.
//
// Reads the exporter's own JSON API (same origin, so the same TLS and basic auth as
// /metrics) and draws one root's processes by fork lineage. No dependencies and no
// build step: the page must work on air-gapped hosts.
//
// Following a root: fetch its document (/api/v1/roots/NAME, true at change-log
// position "seq"), then follow its event stream (/api/v1/events?root=NAME&since=NAME:SEQ)
// and apply each event to the page's model, so a forked process shows within a frame.
// A reset, a gap or a broken stream: refetch the document and resubscribe from its seq.
// No seq in the document, or a stream that keeps failing (404, 503, errors): poll the
// document once a second, as before, and try the stream again later. The status line
// says which (data-mode: stream, connecting, polling or paused).
//
// Scale: the lineage index is rebuilt in O(members) (a few ms for thousands) at most
// once per animation frame however many events arrived (and less often when it is
// slow), keeping each process's node (little garbage), only the rows in view exist in
// the DOM (a virtual scroller), a row's DOM is rewritten only when what it shows changed,
// and a recent change keeps its element. bench/page.py times it (the "ptx:" measures).
"use strict";
(() => {
  const POLL_MS = 1000;
  const MAX_BACKOFF_MS = 5000;  // while the exporter is unreachable
  const ROOTS_MS = 30000;       // while streaming: the other roots' counts, refreshed slowly
  const STREAM_RETRY_MS = 30000;  // polling after the stream failed: try it again after this
  const STREAM_OPEN_MS = 10000;  // a stream not open after this has failed
  const STREAM_FAILS = 3;       // stream failures within a minute before falling back to polling
  const MAX_RESETS = 5;         // resets within 30 s before falling back to polling
  const HISTORY = 100;          // recent changes and events kept from the stream (as the server)
  const ROW_H = 22;             // px, the --row-h of app.css
  const OVERSCAN = 12;          // rows drawn above and below the view
  const MAX_RECENT = 200;
  const INDENT = 16;            // px per generation
  const LABELS = { orphaned: "orphan", zombie: "zombie", pid_reused: "pid reused", exited: "exited" };
  const PROBLEMS = new Set(["orphaned", "zombie", "pid_reused"]);
  const SIGNALS = { 1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS",
    8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE",
    14: "SIGALRM", 15: "SIGTERM" };
  // the SSE event names of /api/v1/events (see docs: the stream's wire format)
  const KINDS = ["joined", "exec", "reparented", "exited", "class", "action", "restart", "root_up",
    "root_down", "root_removed", "left", "reset", "lost", "message"];

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
    doc: null,          // the root's document: its header fields, recent changes, events
    live: new Map(),    // "pid:start_ticks" -> member: live, listed
    gone: new Map(),    // "pid:start_ticks" -> member: exited and still kept (zombies too)
    instances: new Map(),
    exitWords: new Map(),  // key -> how it exited, in words (a reaped zombie's reason again)
    includeRoot: true,  // whether the root's instances are listed
    seq: null,          // the change-log position the model is true at (null: unknown)
    nodes: new Map(),   // "pid:start_ticks" -> node
    tops: [],
    order: [],          // every node, pre-order
    rows: [],           // the nodes shown, in order
    collapsed: new Set(),
    exitedOpen: false,  // exited groups ("▶ 37 exited") open by default (Expand all) or not
    exitedFlip: new Set(),  // group keys toggled away from that default
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
    es: null,           // the EventSource while following the stream
    esOpen: false,
    esUrl: "",
    streamOff: "",      // why the page polls instead of streaming
    streamRetryAt: 0,   // Date.now() from which the stream may be tried again
    streamErrors: [],   // Date.now() of recent stream failures
    resets: [],         // Date.now() of recent resets
    applied: 0,         // events applied from the stream
    resyncs: 0,         // refetches after a reset, a gap or a broken stream
    touched: new Set(), // keys changed since the last frame
    restructured: false,
    frameQueued: false,
    lastFrame: 0,
    skewLo: -Infinity,  // server clock minus ours lies in [skewLo, skewHi] (ms)
    skewHi: Infinity,
    recentSig: "",
    recentSeen: new Set(),
    above: new Map(),   // instance key -> {at, list} : its ancestors outside the root
    rebuilds: 0,        // lineage index rebuilds (each walk's stamp)
    buildMs: 0,
    renderMs: 0,
  };

  // ---- time ------------------------------------------------------------------------

  // A Performance API measure of the work since t0 (performance.now()): "ptx:doc" (a fetched
  // document becomes the page), "ptx:frame" (the stream's events since the last frame are
  // drawn), "ptx:refresh" (refilter and redraw: a fold, a filter, Expand or Collapse all).
  // bench/page.py reads them; only the latest of each name stays in the timeline, so a
  // page left open for days holds no more.
  function measure(name, t0) {
    try {
      performance.clearMeasures(name);
      performance.measure(name, { start: t0, end: performance.now() });
    } catch (_) { /* an old browser: no measures */ }
  }

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

  // the exporter's sentence for how a process ended (classification.exit_reason)
  function exitReason(m) {
    const who = "process " + m.pid + " (" + (m.comm || "?") + ")";
    if (m.exit_signal !== null && m.exit_signal !== undefined) {
      return who + " was killed by " + (SIGNALS[m.exit_signal] || "signal " + m.exit_signal);
    }
    if (m.exit_code !== null && m.exit_code !== undefined) return who + " exited with code " + m.exit_code;
    return who + " is gone; its exit was not observed (lost events)";
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

  // Fetches the roots and the selected root's document; then follows the root's event
  // stream if it can (and stops polling), else polls again in a second.
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
      if (!name && !S.rootName && S.roots.length) {
        // the URL names no root: show the one most worth a look, and say so in the URL
        const pick = mostInteresting(S.roots);
        history.replaceState(null, "", "#root=" + encodeURIComponent(pick));
        selectRoot(pick);
        return;
      }
      if (doc && name === S.rootName) {
        setDoc(doc);
        follow(name);
      }
      renderRoots();
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

  // A root with orphans or zombies, else one that is down, else the first (in list order).
  function mostInteresting(roots) {
    const bad = (r) => ((r.classes || {}).orphaned || 0) + ((r.classes || {}).zombie || 0);
    return (roots.find((r) => bad(r) > 0) || roots.find((r) => !r.up) || roots[0]).name;
  }

  function schedule() {
    clearTimeout(S.timer);
    if (S.paused || document.hidden) return;
    if (S.es) {  // the stream keeps the selected root current; the others' counts, slowly
      S.timer = setTimeout(refreshRoots, ROOTS_MS);
      return;
    }
    const wait = S.failures ? Math.min(MAX_BACKOFF_MS, POLL_MS * 2 ** Math.min(S.failures, 3)) : POLL_MS;
    S.timer = setTimeout(poll, wait);
  }

  async function refreshRoots() {
    const gen = S.gen;
    try {
      const list = await getJSON("/api/v1/roots");
      if (gen !== S.gen) return;
      S.roots = list.roots || [];
      renderRoots();
    } catch (_) {
      // the stream says whether the exporter is reachable; try again next round
    }
    if (gen === S.gen) schedule();
  }

  // ---- following the event stream ------------------------------------------------------

  // Subscribe to the root's events after the position the model is true at, unless the
  // document has no position or the stream failed lately (then the polls go on).
  function follow(name) {
    if (S.paused || document.hidden || S.es) return;
    if (S.seq === null) {
      S.streamOff = "the exporter's documents carry no seq";
      return;
    }
    if (Date.now() < S.streamRetryAt) return;
    openStream(name, S.seq);
  }

  function openStream(name, seq) {
    closeStream();
    const url = location.origin + "/api/v1/events?root=" + encodeURIComponent(name) +
      "&since=" + encodeURIComponent(name + ":" + seq);
    let es;
    try {
      es = new EventSource(url);  // same origin: the page's credentials go along
    } catch (err) {
      fallBack("cannot open the event stream: " + (err.message || err), STREAM_RETRY_MS);
      return;
    }
    S.es = es;
    S.esOpen = false;
    S.esUrl = url;
    // a stream that neither opens nor fails (a proxy holding it): as good as failed
    setTimeout(() => { if (es === S.es && !S.esOpen) streamFailed(es, null); }, STREAM_OPEN_MS);
    es.onopen = () => {
      if (es !== S.es) return;
      S.esOpen = true;
      S.streamOff = "";
      S.error = null;
      S.lastOk = Date.now();
      renderStatus();
    };
    const onFrame = (e) => frameArrived(es, e);
    for (const kind of KINDS) es.addEventListener(kind, onFrame);
    // both a broken connection and the server's own `event: error` frame (a cut-off)
    es.addEventListener("error", (e) => streamFailed(es, e));
    schedule();
    renderStatus();
  }

  function closeStream() {
    if (!S.es) return;
    S.es.close();
    S.es = null;
    S.esOpen = false;
  }

  function frameArrived(es, e) {
    if (es !== S.es) return;
    let ev;
    try { ev = JSON.parse(e.data); } catch (_) { return; }
    if (!ev || typeof ev !== "object" || (ev.root !== undefined && ev.root !== S.rootName)) return;
    if (ev.kind === "reset" || ev.kind === "lost") {
      // events were dropped before we saw them: the model is stale
      const now = Date.now();
      S.resets = S.resets.filter((t) => now - t < 30000);
      S.resets.push(now);
      if (S.resets.length >= MAX_RESETS) {
        fallBack("the stream was reset " + S.resets.length + " times in 30 s", STREAM_RETRY_MS);
      } else {
        resync();
      }
      return;
    }
    if (typeof ev.seq === "number" && S.seq !== null) {
      if (ev.seq <= S.seq) return;  // already in the model
      if (ev.seq !== S.seq + 1) { resync(); return; }  // a gap: never expected, but never ignored
      S.seq = ev.seq;
    }
    apply(ev);
    S.applied += 1;
    S.lastOk = Date.now();
    if (ev.kind === "root_removed") {  // the stream ends here; the next document says why
      resync();
      return;
    }
    queueFrame();
  }

  async function streamFailed(es, e) {
    if (es !== S.es) return;
    const opened = S.esOpen;
    const url = S.esUrl;
    let why = "";
    if (e && typeof e.data === "string") {  // the server's cut-off frame (slow, shutdown)
      try {
        const j = JSON.parse(e.data);
        why = "the exporter ended the stream (" + (j.reason || "?") + ")";
      } catch (_) { why = "the exporter ended the stream"; }
    }
    closeStream();
    const now = Date.now();
    S.streamErrors = S.streamErrors.filter((t) => now - t < 60000);
    S.streamErrors.push(now);
    if (!opened && !why) {
      // refused before it started: ask why (EventSource does not tell the status)
      const gen = S.gen;
      const probe = await probeStream(url);
      if (gen !== S.gen || S.es || S.paused) return;
      if (probe.status === 404 || probe.status === 503 || probe.status === 401 || probe.status === 403) {
        fallBack("event stream: " + probe.msg, probe.status === 503 ? STREAM_RETRY_MS : 2 * STREAM_RETRY_MS);
        return;
      }
      why = probe.status ? "event stream: " + probe.msg : "the event stream failed";
    }
    if (S.streamErrors.length >= STREAM_FAILS) {
      fallBack((why || "the event stream broke") + ", " + S.streamErrors.length + " times in a minute",
        STREAM_RETRY_MS);
      return;
    }
    S.streamOff = why || "the event stream broke";
    renderStatus();
    resync(250 * S.streamErrors.length);
  }

  // The status of GET url, without waiting for a body that would never end.
  async function probeStream(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 5000);
    try {
      const res = await fetch(url, { cache: "no-store", credentials: "same-origin", signal: ctl.signal });
      let msg = res.status + " " + res.statusText;
      if (!res.ok) {
        try { const j = await res.json(); if (j && j.error) msg = res.status + " " + j.error; } catch (_) { /* not JSON */ }
      }
      return { status: res.status, msg };
    } catch (err) {
      return { status: 0, msg: err.message || String(err) };
    } finally {
      clearTimeout(timer);
      ctl.abort();
    }
  }

  // Poll instead, and try the stream again after retryMs.
  function fallBack(why, retryMs) {
    closeStream();
    S.streamOff = why;
    S.streamRetryAt = Date.now() + retryMs;
    renderStatus();
    schedule();
  }

  // Refetch the document and resubscribe from its seq.
  function resync(delayMs) {
    closeStream();
    S.resyncs += 1;
    clearTimeout(S.timer);
    if (S.paused || document.hidden) return;
    S.gen += 1;  // answers to older requests no longer apply
    if (delayMs) S.timer = setTimeout(poll, delayMs); else poll();
  }

  // ---- applying events to the model --------------------------------------------------------

  function listed(depth) { return depth > 0 || S.includeRoot; }

  function memberOf(ev) {
    const m = { pid: ev.pid, start_ticks: ev.start_ticks, comm: ev.comm ?? null, exe: ev.exe ?? null,
      user: ev.user ?? (ev.uid === null || ev.uid === undefined ? "?" : String(ev.uid)),
      ppid: ev.ppid ?? 0, lineage_ppid: ev.lineage_ppid ?? null, lineage_known: Boolean(ev.lineage_known),
      lineage_source: ev.lineage_source || "", depth: ev.depth || 0, class: "healthy", reason: "",
      started_at: ev.started_at || ev.ts, exited_at: null, exit_code: null, exit_signal: null };
    if (ev.cmdline !== undefined && ev.cmdline !== null) m.cmdline = ev.cmdline;
    return m;
  }

  function keep(list, item) {
    list.push(item);
    if (list.length > HISTORY) list.splice(0, list.length - HISTORY);
  }

  function update(k, changes) {
    for (const table of [S.live, S.gone, S.instances]) {
      const m = table.get(k);
      if (m) table.set(k, Object.assign({}, m, changes));
    }
  }

  // What the exporter's own mirror of the root does with the event (mirror.py).
  function apply(ev) {
    const d = S.doc;
    if (!d) return;
    const k = keyOf(ev);
    const c = d.classes;
    const bump = (cls, by) => { c[cls] = Math.max(0, (c[cls] || 0) + by); };
    switch (ev.kind) {
      case "joined": {
        const m = memberOf(ev);
        if (m.depth === 0) {
          S.instances.set(k, { pid: m.pid, start_ticks: m.start_ticks, comm: m.comm, started_at: m.started_at });
        }
        if (listed(m.depth) && !S.live.has(k)) {
          S.live.set(k, m);
          bump("healthy", 1);
          d.spawned_total += 1;
          keep(d.recent, Object.assign({ event: "added" }, m));
        }
        S.restructured = true;
        break;
      }
      case "exec": {
        const changes = { comm: ev.comm ?? null, exe: ev.exe || null };
        if (ev.cmdline !== undefined && ev.cmdline !== null) changes.cmdline = ev.cmdline;
        update(k, changes);
        break;
      }
      case "reparented":
        update(k, { ppid: ev.ppid ?? 0 });
        break;
      case "exited": {
        S.instances.delete(k);
        const m = S.live.get(k);
        if (m) {
          S.live.delete(k);
          bump(m.class === "orphaned" ? "orphaned" : "healthy", -1);
          d.exited_total += 1;
          const words = ev.reason || exitReason(Object.assign({}, ev, { comm: m.comm }));
          S.exitWords.set(k, words);
          const info = Object.assign({}, m, { class: "exited", reason: words, exited_at: ev.ts,
            exit_code: ev.exit_code ?? null, exit_signal: ev.exit_signal ?? null });
          S.gone.set(k, info);
          keep(d.recent, Object.assign({ event: "removed" }, info));
        }
        S.restructured = true;
        break;
      }
      case "class": {
        const to = ev.new_class || "healthy";
        const m = S.live.get(k);
        if (m) {
          bump(m.class, -1);
          bump(to, 1);
          S.live.set(k, Object.assign({}, m, { class: to, reason: ev.reason || "", ppid: ev.ppid ?? m.ppid }));
        } else {
          const g = S.gone.get(k);
          if (g) {
            bump("zombie", (to === "zombie" ? 1 : 0) - (g.class === "zombie" ? 1 : 0));
            const reason = to === "exited" ? (S.exitWords.get(k) || exitReason(g)) : (ev.reason || "");
            S.gone.set(k, Object.assign({}, g, { class: to, reason }));
          }
        }
        keep(d.events, ev);
        break;
      }
      case "left":
        if (S.gone.delete(k)) S.restructured = true;
        S.exitWords.delete(k);
        break;
      case "restart":
        d.restarts_total += 1;
        keep(d.events, ev);
        break;
      case "action":
        keep(d.events, ev);
        break;
      case "root_up":
        d.up = true;
        d.warnings = [];
        break;
      case "root_down":
        d.up = false;
        break;
      default:
        break;
    }
    S.touched.add(k);
  }

  // One redraw for every event that arrived since the last: at most one per animation
  // frame, and less often while a redraw costs more than a few ms (a big tree in a storm).
  function queueFrame() {
    if (S.frameQueued) return;
    S.frameQueued = true;
    const wait = S.lastFrame + Math.min(100, 4 * (S.buildMs + S.renderMs)) - performance.now();
    const go = () => requestAnimationFrame(drawFrame);
    if (wait > 0) setTimeout(go, wait); else go();
  }

  function drawFrame() {
    S.frameQueued = false;
    const t0 = S.lastFrame = performance.now();
    if (!S.doc) return;
    const details = S.restructured || (S.selected !== null && S.touched.has(S.selected));
    S.touched.clear();
    S.restructured = false;
    rebuild();
    renderHead();
    refresh();
    renderRecent();
    if (details) renderDetails();
    renderRoots();
    renderStatus();
    measure("ptx:frame", t0);
  }

  // ---- the lineage index ---------------------------------------------------------------

  function keyOf(m) { return m.pid + ":" + m.start_ticks; }

  // The root's document becomes the page's model; the stream's events after doc.seq
  // change the model, and the index below is rebuilt from it.
  function setDoc(doc) {
    const t0 = performance.now();
    const live = new Map();
    const gone = new Map();
    for (const m of doc.members || []) {
      // members lists the live ones, then zombies (exited, unreaped)
      const k = keyOf(m);
      if (m.class === "zombie" || m.class === "exited") gone.set(k, m); else live.set(k, m);
    }
    for (const m of doc.tombstones || []) if (!live.has(keyOf(m)) && !gone.has(keyOf(m))) gone.set(keyOf(m), m);
    const instances = new Map((doc.instances || []).map((i) => [keyOf(i), i]));
    doc.classes = Object.assign({ healthy: 0, orphaned: 0, zombie: 0 }, doc.classes);
    doc.recent = doc.recent || [];
    doc.events = doc.events || [];
    S.doc = doc;
    S.live = live;
    S.gone = gone;
    S.instances = instances;
    S.exitWords = new Map();
    S.seq = typeof doc.seq === "number" ? doc.seq : null;
    // instances are listed unless the root says include_root: false
    if (typeof doc.include_root === "boolean") S.includeRoot = doc.include_root;
    else if (instances.size) S.includeRoot = [...instances.keys()].some((k) => live.has(k));
    else S.includeRoot = true;
    S.touched.clear();
    S.restructured = false;
    rebuild();
    renderHead();
    refresh();
    renderRecent();
    renderDetails();
    measure("ptx:doc", t0);
  }

  function rebuild() {
    const t0 = performance.now();
    // a process's node is kept from one rebuild to the next (reset here), so a redraw of a
    // big root makes little garbage: a frame's work is not followed by a collector's pause
    const old = S.nodes;
    const nodes = new Map();
    const add = (m, gone) => {
      const k = keyOf(m);
      if (nodes.has(k)) return;
      let n = old.get(k);
      if (n) {
        n.m = m; n.gone = gone; n.kids.length = 0; n.parent = null;
        n.depth = 0; n.size = 1; n.bad = 0; n.settled = false;
      } else {
        n = { k, m, gone, kids: [], parent: null, depth: 0, size: 1, bad: 0, settled: false, walked: 0 };
      }
      nodes.set(k, n);
    };
    for (const m of S.live.values()) add(m, false);
    for (const m of S.gone.values()) add(m, m.class !== "zombie");
    // a child's fork parent is the listed process with its lineage_ppid that started
    // no later than the child (a pid can be held by an exited parent and a newer stranger)
    const byPid = new Map();  // pid -> its node, or its nodes when a pid is held twice
    for (const n of nodes.values()) {
      const same = byPid.get(n.m.pid);
      if (!same) byPid.set(n.m.pid, n);
      else if (Array.isArray(same)) same.push(n);
      else byPid.set(n.m.pid, [same, n]);
    }
    const tops = [];
    for (const n of nodes.values()) {
      const pp = n.m.lineage_ppid;
      let best = null;
      if (pp !== null && pp !== undefined && pp !== n.m.pid) {
        const held = byPid.get(pp);
        for (const c of Array.isArray(held) ? held : held ? [held] : []) {
          if (c.m.start_ticks <= n.m.start_ticks && (!best || c.m.start_ticks > best.m.start_ticks)) best = c;
        }
      }
      n.parent = best;
      (best ? best.kids : tops).push(n);
    }
    const byStart = (a, b) => a.m.start_ticks - b.m.start_ticks || a.m.pid - b.m.pid;
    tops.sort(byStart);
    const order = [];
    const stamp = ++S.rebuilds;  // n.walked === stamp: seen in this walk
    const walk = (top) => {
      const stack = [top];
      top.depth = 0;
      while (stack.length) {
        const n = stack.pop();
        if (n.walked === stamp) continue;
        n.walked = stamp;
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
      if (n.walked !== stamp) {
        if (n.parent) n.parent.kids.splice(n.parent.kids.indexOf(n), 1);
        n.parent = null;
        tops.push(n);
        walk(n);
      }
    }
    // subtree sizes and problem counts, children before parents; "settled": an exited
    // process whose whole subtree has exited too (no live process, zombie or reused pid
    // below it), drawn folded into its parent's exited group. An exited wrapper that
    // still holds a live orphan is never settled: it stays in view, as the orphan's parent.
    for (let i = order.length - 1; i >= 0; i--) {
      const n = order[i];
      n.bad += PROBLEMS.has(n.m.class) ? 1 : 0;
      n.settled = n.gone && n.m.class === "exited" && n.kids.every((c) => c.settled);
      if (n.parent) { n.parent.size += n.size; n.parent.bad += n.bad; }
    }
    S.nodes = nodes;
    S.tops = tops;
    S.order = order;
    S.buildMs = performance.now() - t0;
  }

  // ---- filtering and flattening --------------------------------------------------------

  // The exited group of a parent's settled children ("exited:" alone: the settled top-level
  // processes). Groups are shut unless Expand all opened them all; a click flips one.
  function groupKey(parent) { return "exited:" + (parent ? parent.k : ""); }
  function isGroupKey(k) { return typeof k === "string" && k.startsWith("exited:"); }
  function groupOpen(k) { return S.exitedOpen !== S.exitedFlip.has(k); }
  function setGroupOpen(k, open) {
    if (open === S.exitedOpen) S.exitedFlip.delete(k); else S.exitedFlip.add(k);
  }

  const HAY = new WeakMap();  // member -> its searchable text (a changed member is a new object)
  function hay(n) {
    const m = n.m;
    let h = HAY.get(m);
    if (h === undefined) {
      h = [m.pid, m.comm, m.user, m.class, LABELS[m.class] || "", m.depth === 0 ? "root" : "",
        m.exe || "", m.cmdline || "", m.reason || ""].join(" ").toLowerCase();
      HAY.set(m, h);
    }
    return h;
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
    // Without a filter, a parent's settled children (exited, nothing alive below them)
    // are one row after its other children, "▶ N exited"; opened, they follow that row.
    // A filter shows every match instead (as it ignores folding).
    const rows = [];
    const stack = [];
    const push = (parent, kids, depth) => {
      if (!keep) {
        const settled = kids.filter((c) => c.settled);
        if (settled.length) {
          let size = 0;
          for (const c of settled) size += c.size;
          stack.push({ group: true, k: groupKey(parent), parent, depth, kids: settled, size });
        }
      }
      for (let i = kids.length - 1; i >= 0; i--) if (keep || !kids[i].settled) stack.push(kids[i]);
    };
    push(null, S.tops, 0);
    while (stack.length) {
      const n = stack.pop();
      if (n.group) {
        rows.push(n);
        if (groupOpen(n.k)) for (let i = n.kids.length - 1; i >= 0; i--) stack.push(n.kids[i]);
        continue;
      }
      if (keep && !keep.has(n)) continue;
      rows.push(n);
      if (!keep && S.collapsed.has(n.k)) continue;
      push(n, n.kids, n.depth + 1);
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
    measure("ptx:refresh", t0);
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
      if (S.rows[i].group) fillGroup(pool[j], S.rows[i], i); else fillRow(pool[j], S.rows[i], i, now, anc);
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

  // the note's tooltip: the whole reason and the whole command line, which the column cuts
  function noteTip(m) {
    const cmd = m.cmdline || m.exe || "";
    if (!m.reason) return cmd;
    return cmd ? m.reason + "\n" + (m.cmdline ? "command line: " : "exe: ") + cmd : m.reason;
  }

  // the row standing for a parent's settled children: "▶ 37 exited"
  function fillGroup(row, g, i) {
    const open = groupOpen(g.k);
    const sig = ["group", g.k, g.depth, g.size, open].join("\u0001");
    row.hidden = false;
    row.style.transform = "translateY(" + i * ROW_H + "px)";
    if (row._sig !== sig) {
      row._sig = sig;
      row._key = g.k;
      row.className = "row exited-group";
      delete row.dataset.pid;
      delete row.dataset.class;
      row.dataset.key = g.k;
      row.dataset.exited = g.size;
      row.dataset.depth = g.depth;
      row.setAttribute("aria-level", g.depth + 1);
      row.setAttribute("aria-expanded", String(open));
      row.replaceChildren();
      const tree = el("span", "c-tree");
      tree.style.paddingLeft = g.depth * INDENT + "px";
      const t = el("button", "tog", open ? "▼" : "▶");
      t.type = "button";
      t.tabIndex = -1;
      t.setAttribute("aria-label", open ? "collapse" : "expand");
      tree.appendChild(t);
      tree.appendChild(el("span", "group-count", g.size + " exited"));
      row.appendChild(tree);
      const who = g.parent ? g.parent.m.pid + " " + (g.parent.m.comm || "?") : "the top level";
      row.title = g.size + " exited process" + (g.size > 1 ? "es" : "") + " under " + who +
        " (nothing alive below them): click to " + (open ? "fold them" : "show them");
    }
    row.classList.toggle("selected", g.k === S.selected);
    row.classList.remove("anc");
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
      delete row.dataset.exited;
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
      const tip = noteTip(m);
      if (tip) noteEl.title = tip;
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

  // the selected root's row as the page's model has it (current between list fetches)
  function rootsShown() {
    const d = S.doc;
    if (!d || d.name !== S.rootName) return S.roots;
    const c = d.classes;
    return S.roots.map((r) => (r.name !== d.name ? r : Object.assign({}, r, {
      up: d.up, member_count: (c.healthy || 0) + (c.orphaned || 0),
      classes: Object.assign({}, r.classes, c) })));
  }

  function renderRoots() {
    const box = $("roots");
    const roots = rootsShown();
    const sig = JSON.stringify(roots.map((r) => [r.name, r.up, r.member_count, r.classes,
      r.runtime, r.confidence])) + S.rootName;
    if (box._sig === sig) return;
    box._sig = sig;
    const table = el("table");
    const head = el("tr");
    for (const h of ["root", "up", "members", "orphan", "zombie"]) head.appendChild(el("th", null, h));
    table.appendChild(head);
    for (const r of roots) {
      const tr = el("tr", "root-row" + (r.name === S.rootName ? " selected" : ""));
      tr.dataset.root = r.name;
      const name = el("td", "name");
      const a = el("a", null, r.name);
      a.href = "#root=" + encodeURIComponent(r.name);
      name.appendChild(a);
      // added through the write API, not config.yaml (the page itself never writes)
      if (r.runtime) name.appendChild(el("span", "badge b-runtime", "runtime"));
      if (r.confidence === "degraded") {
        const b = el("span", "badge b-degraded", "~");
        b.title = "membership degraded: " + (r.confidence_reason || "");
        name.appendChild(b);
      }
      tr.appendChild(name);
      tr.appendChild(el("td", r.up ? null : "down", r.up ? "up" : "DOWN"));
      tr.appendChild(el("td", null, r.member_count));
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
    if (doc.runtime) h.appendChild(el("span", "badge b-runtime", "runtime"));
    const facts = el("div", "facts");
    facts.appendChild(el("span", null, "select " + doc.select + " = " + JSON.stringify(doc.match)));
    const insts = [...S.instances.values()];
    const inst = insts.map((i) => i.pid + " (" + (i.comm || "?") + ")").join(", ");
    facts.appendChild(el("span", null, "instance" + (insts.length === 1 ? " " : "s ") + (inst || "none")));
    const c = doc.classes || {};
    const live = (c.healthy || 0) + (c.orphaned || 0);  // zombies have exited: not live
    facts.appendChild(el("span", null, live + " live: " + (c.healthy || 0) + " healthy, " +
      (c.orphaned || 0) + " orphaned · " + (c.zombie || 0) + " zombie"));
    facts.appendChild(el("span", null, "spawned " + doc.spawned_total + " · exited " + doc.exited_total +
      " · restarts " + doc.restarts_total));
    if (doc.confidence) {
      const conf = el("span", doc.confidence === "degraded" ? "conf-degraded" : null,
        "confidence " + doc.confidence);
      if (doc.confidence_reason) conf.title = doc.confidence_reason;
      facts.appendChild(conf);
    }
    const api = el("span");
    const a1 = el("a", null, "JSON");
    a1.href = "/api/v1/roots/" + encodeURIComponent(doc.name);
    const a2 = el("a", null, "tree JSON");
    a2.href = "/api/v1/tree?root=" + encodeURIComponent(doc.name);
    api.append(a1, " · ", a2);
    facts.appendChild(api);
    const parts = [h, facts];
    if (doc.truncated) {
      const shown = S.live.size;
      parts.push(el("p", "warn", "Listing capped: " + shown + " of " + live +
        " live members shown (raise max_members for this root)."));
    }
    for (const w of doc.warnings || []) parts.push(el("p", "warn", w));
    head.replaceChildren(...parts);
  }

  // how the selected root is followed: stream, connecting, polling or paused
  function mode() {
    if (S.paused) return "paused";
    if (S.es) return S.esOpen ? "stream" : "connecting";
    return "polling";
  }

  function renderStatus() {
    const st = $("status");
    const md = mode();
    st.dataset.polls = S.polls;
    st.dataset.mode = md;
    st.dataset.events = S.applied;
    st.dataset.resyncs = S.resyncs;
    st.dataset.seq = S.seq === null ? "" : S.seq;
    const broken = S.error && md !== "stream" && md !== "paused";
    st.className = "status " + (broken ? "error" : md);
    const at = clock(S.lastOk / 1000);
    let text;
    if (broken) text = "cannot reach the exporter: " + S.error + " (retrying)";
    else if (md === "paused") text = "paused · last update " + at;
    else if (md === "stream") text = "live stream · updated " + at;
    else if (md === "connecting") text = "connecting to the live stream…";
    else text = "polling every " + POLL_MS / 1000 + " s" + (S.rootName && S.streamOff ? " (" + S.streamOff + ")" : "") +
      " · updated " + at;
    if (st.textContent !== text) st.textContent = text;
    st.title = (md === "stream" ? "following " + S.rootName + " at seq " + S.seq + " · " + S.applied + " events applied · " : "") +
      "index " + S.buildMs.toFixed(1) + " ms · flatten+draw " + S.renderMs.toFixed(1) + " ms · " +
      S.order.length + " processes";
    $("pause").textContent = S.paused ? "Resume" : "Pause";
  }

  // ---- drawing: recent changes ---------------------------------------------------------------

  const RECENT_SYM = { added: "+ added", removed: "− exited", class: "! class", restart: "↻ restart",
    action: "⚡ action" };

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
    // keyed: an entry already drawn keeps its element (and its flash, if it is fresh), so a
    // change costs the new entries, not the whole list
    const seen = new Map();
    const keys = items.map((it, i) => {
      const k = [keyed[i], it.ts, it.comm].join("\u0001");
      const n = (seen.get(k) || 0) + 1;  // the same change twice: two entries
      seen.set(k, n);
      return k + "\u0001" + n;
    });
    const want = new Set(keys);
    const had = new Map();
    for (const li of [...list.children]) {
      if (li._k && want.has(li._k)) had.set(li._k, li); else li.remove();  // gone, or "No changes yet."
    }
    let at = list.firstChild;
    items.forEach((it, i) => {
      let li = had.get(keys[i]);
      if (!li) {
        li = el("li");
        li._k = keys[i];
        if (!firstDraw && !S.recentSeen.has(keyed[i])) li.classList.add("fresh");
        li.dataset.key = it.pid + ":" + it.st;
        li.appendChild(el("span", "ts", clock(it.ts)));
        li.appendChild(el("span", "k-" + it.kind, RECENT_SYM[it.kind] || it.kind));
        li.appendChild(el("span", "what", it.pid + " " + (it.comm || "?") + " — " + it.text));
      }
      if (li === at) at = at.nextSibling; else list.insertBefore(li, at);
    });
    S.recentSeen = new Set(keyed);
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
    if (isGroupKey(S.selected)) {
      const g = S.rows.find((r) => r.k === S.selected);
      box.replaceChildren(el("p", "hint", g
        ? g.size + " exited process" + (g.size > 1 ? "es" : "") + " with nothing alive below them, " +
          (groupOpen(g.k) ? "shown below their row." : "folded: click their row (or press →) to show them.")
        : "These exited processes are no longer listed (their tombstones expired)."));
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
    // from the exporter's last resource sample (when the page last read the tree)
    if (!m.exited_at && m.cpu_seconds != null) row("CPU", m.cpu_seconds.toFixed(2) + " s (at the last sample)");
    if (!m.exited_at && m.rss_bytes != null) row("memory", (m.rss_bytes / 1048576).toFixed(1) + " MiB resident");
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
    closeStream();
    S.rootName = name;
    S.doc = null;
    S.seq = null;
    S.live = new Map();
    S.gone = new Map();
    S.instances = new Map();
    S.streamOff = "";
    S.streamRetryAt = 0;
    S.streamErrors = [];
    S.resets = [];
    S.nodes = new Map();
    S.order = [];
    S.rows = [];
    S.selected = null;
    S.hovered = null;
    S.collapsed.clear();
    S.exitedOpen = false;
    S.exitedFlip.clear();
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
      // unfold its ancestors, open the exited groups it is in, and scroll it into view
      let changed = false;
      for (let a = n; a; a = a.parent) {
        if (a !== n && S.collapsed.delete(a.k)) changed = true;
        if (a.settled && !groupOpen(groupKey(a.parent))) { setGroupOpen(groupKey(a.parent), true); changed = true; }
      }
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

  function toggleGroup(key, open) {
    setGroupOpen(key, open === undefined ? !groupOpen(key) : open);
    refresh();
    renderDetails();
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
      if (isGroupKey(row._key)) { select(row._key, false); toggleGroup(row._key); }  // the whole row
      else if (ev.target.closest(".tog")) toggle(row._key);
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
      else if (ev.key === "ArrowLeft" && n && n.group) {
        if (groupOpen(n.k)) { toggleGroup(n.k, false); ev.preventDefault(); return; }
        if (n.parent) i = S.rows.indexOf(n.parent);
      } else if (ev.key === "ArrowLeft" && n) {
        if (n.kids.length && !S.collapsed.has(n.k)) { toggle(n.k, true); ev.preventDefault(); return; }
        if (n.parent) i = S.rows.indexOf(n.parent);
      } else if (ev.key === "ArrowRight" && n && n.group) { toggleGroup(n.k, true); ev.preventDefault(); return; }
      else if (ev.key === "ArrowRight" && n && n.kids.length) { toggle(n.k, false); ev.preventDefault(); return; }
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
      S.exitedOpen = false;  // and shut every exited group
      S.exitedFlip.clear();
      refresh();
    });
    $("expand-all").addEventListener("click", () => {
      S.collapsed.clear();
      S.exitedOpen = true;  // exited groups too, including those that form later
      S.exitedFlip.clear();
      refresh();
    });
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
      if (S.paused) {
        clearTimeout(S.timer);
        S.gen += 1;  // an answer on its way is not drawn either
        closeStream();
      } else {
        poll();  // a fresh document, then the stream from its seq
      }
      renderStatus();
    });
    document.addEventListener("visibilitychange", () => {
      // a hidden page neither polls nor holds a stream; shown again, it catches up
      if (document.hidden) {
        clearTimeout(S.timer);
        closeStream();
        renderStatus();
      } else if (!S.paused) {
        poll();
      }
    });
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
