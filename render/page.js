(function () {
  // Open the <details> around the target of the URL's #fragment and
  // scroll to it (browsers that do not open details by themselves).
  function show() {
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id && document.getElementById(id);
    if (!el) return;
    for (var p = el; p; p = p.parentElement) {
      if (p.tagName === "DETAILS") p.open = true;
    }
    el.scrollIntoView({block: "center"});
  }
  window.addEventListener("hashchange", show);
  show();
  // A click on a line number makes that line the URL's fragment: a deep link.
  document.addEventListener("click", function (ev) {
    var li = ev.target;
    if (li.tagName !== "LI" || !li.id || ev.offsetX >= 0) return;
    if (!li.parentElement || !li.parentElement.classList.contains("log")) return;
    location.hash = li.id;
  });
})();
