// Tandem dashboard: refresh the page's live region without a reload.
// A page that marks <main id="live" data-live="MS"> is fetched again every
// MS milliseconds with ?fragment=1, and the region's content is replaced
// by the server-rendered (and server-escaped) fragment. Nothing here reads
// the URL into the page: the fragment is HTML the server made.
//
// A log tail (<pre id="log">) starts scrolled to its end and, while it
// grows, stays there: after a refresh it is scrolled to the end again if it
// was at the end before, and otherwise kept where the reader left it.
(function () {
  "use strict";
  function logAtEnd(log) {
    return log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  }
  function toEnd(log) { log.scrollTop = log.scrollHeight; }
  var first = document.getElementById("log");
  if (first) { toEnd(first); }
  var live = document.getElementById("live");
  if (!live || !window.fetch) { return; }
  var every = parseInt(live.getAttribute("data-live"), 10) || 2000;
  var busy = false;
  function fragmentURL() {
    var u = new URL(window.location.href);
    u.searchParams.set("fragment", "1");
    return u.toString();
  }
  function tick() {
    if (busy || document.hidden) { return; }
    // Do not pull the rug from under someone typing in a form.
    var f = document.activeElement;
    if (f && f !== document.body && live.contains(f) && /^(INPUT|SELECT|TEXTAREA)$/.test(f.tagName)) { return; }
    busy = true;
    fetch(fragmentURL(), { credentials: "same-origin", cache: "no-store", redirect: "error" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        if (!r.ok) { return null; }
        return r.text();
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          var log = document.getElementById("log");
          var follow = !log || logAtEnd(log), top = log ? log.scrollTop : 0;
          live.innerHTML = html;
          log = document.getElementById("log");
          if (log) {
            if (follow) { toEnd(log); } else { log.scrollTop = top; }
          }
          live.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  window.setInterval(tick, every);
})();
