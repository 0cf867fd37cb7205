(function () {
  // Times are written as absolute UTC (what a reader without script
  // sees); shown relative to now, the absolute time on hover.
  var now = Date.now();
  var els = document.querySelectorAll("time[datetime]");
  for (var i = 0; i < els.length; i++) {
    var t = Date.parse(els[i].getAttribute("datetime"));
    if (isNaN(t)) continue;
    var s = Math.round((now - t) / 1000), text;
    if (s < -60) continue; // in the future: keep the absolute time
    if (s < 60) text = "just now";
    else if (s < 3600) text = plural(Math.floor(s / 60), "minute");
    else if (s < 86400) text = plural(Math.floor(s / 3600), "hour");
    else if (s < 45 * 86400) text = plural(Math.floor(s / 86400), "day");
    else continue; // long ago: the date says more
    els[i].title = els[i].textContent;
    els[i].textContent = text;
  }
  function plural(n, unit) { return n + " " + unit + (n === 1 ? "" : "s") + " ago"; }
})();
