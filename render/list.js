(function () {
  // Filters by state, request and branch: hide the rows that do not match.
  var box = document.getElementById("filters");
  if (!box) return;
  box.hidden = false;
  var sel = box.querySelectorAll("select");
  var rows = document.querySelectorAll("table.runs tr[data-state]");
  function apply() {
    var want = {};
    for (var i = 0; i < sel.length; i++) want[sel[i].name] = sel[i].value;
    var shown = 0;
    for (var k = 0; k < rows.length; k++) {
      var r = rows[k], ok = true;
      for (var f in want) if (want[f] && r.getAttribute("data-" + f) !== want[f]) ok = false;
      r.hidden = !ok;
      if (ok) shown++;
    }
    document.getElementById("shown").textContent = shown + " of " + rows.length + " runs";
  }
  for (var i = 0; i < sel.length; i++) sel[i].addEventListener("change", apply);
  apply();
})();
