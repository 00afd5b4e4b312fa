// Live updates: the server streams "change" when it records an event;
// the page redraws itself. No framework, no CDN.
(function () {
  if (!window.EventSource) return;
  var since = document.body.getAttribute("data-since") || "";
  var q = "since=" + encodeURIComponent(since);
  var job = document.body.getAttribute("data-job");
  if (job) q += "&job=" + encodeURIComponent(job) + "&version=" + encodeURIComponent(document.body.getAttribute("data-version"));
  var es = new EventSource("/ui/live?" + q);
  es.addEventListener("change", function () { window.location.reload(); });
  es.onerror = function () { es.close(); setTimeout(function () { window.location.reload(); }, 10000); };
})();
