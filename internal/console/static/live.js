// Live updates: the server streams "change" when it records an event;
// the page redraws itself. No framework, no CDN.
(function () {
  if (!window.EventSource) return;
  var es = new EventSource("/ui/live");
  es.addEventListener("change", function () { window.location.reload(); });
  es.onerror = function () { es.close(); setTimeout(function () { window.location.reload(); }, 10000); };
})();
