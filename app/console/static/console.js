// eventrelay console: progressive enhancement only; every page works without it.
"use strict";

// "Redrive all that match": in chunks, with a progress bar, then the list again.
// The counts are capped on the server ("10,000+"): the bar's end moves with
// what the server says is left.
function redriveAll(form) {
  const progress = document.getElementById("redrive-progress");
  const status = document.getElementById("redrive-status");
  const button = form.querySelector("button");
  // What the page counted bounds the run (letters that die again while it
  // runs are not chased), unless that count was capped.
  const bound = form.dataset.more === "true" ? Infinity : Number(form.dataset.total) || 0;
  let done = 0;
  progress.max = Number(form.dataset.total) || 1;
  progress.hidden = false;
  button.disabled = true;

  async function step() {
    const body = new URLSearchParams(new FormData(form));
    body.set("limit", "100");
    const response = await fetch(form.action, {
      method: "POST",
      body: body,
      headers: { "Accept": "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) {
      status.textContent = "Redrive stopped: the server answered " + response.status + ".";
      button.disabled = false;
      return;
    }
    const result = await response.json();
    done += result.redriven;
    const total = done + result.remaining;
    progress.max = Math.max(total, 1);
    progress.value = done;
    status.textContent =
      "Redriven " + done + " of " + total + (result.more ? "+" : "") + ".";
    if (result.redriven > 0 && result.remaining > 0 && done < bound) {
      await step();
    } else {
      const next = new URLSearchParams(window.location.search);
      next.delete("after");
      next.delete("done");
      next.set("redriven", String(done));
      window.location.assign(window.location.pathname + "?" + next.toString());
    }
  }
  step().catch(function (error) {
    status.textContent = "Redrive stopped: " + error.message;
    button.disabled = false;
  });
}

document.addEventListener("DOMContentLoaded", function () {
  const all = document.getElementById("redrive-all");
  if (all) {
    all.addEventListener("submit", function (event) {
      event.preventDefault();
      redriveAll(all);
    });
  }
  const selectAll = document.getElementById("select-all");
  if (selectAll) {
    selectAll.addEventListener("change", function () {
      document.querySelectorAll('input[name="ids"]').forEach(function (box) {
        box.checked = selectAll.checked;
      });
    });
  }
});
