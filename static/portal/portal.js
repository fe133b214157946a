// htmx swaps the explanations the portal sends (refusals, form errors); anything else it could not
// handle (a 500, the server not answering) is announced here instead of failing silently.
document.addEventListener("DOMContentLoaded", () => {
  const alertBox = document.getElementById("htmx-alert");
  if (!alertBox) return;
  const show = (text) => {
    alertBox.textContent = text;
    alertBox.hidden = false;
  };
  document.body.addEventListener("htmx:responseError", (event) => {
    show(`The portal could not complete this (HTTP ${event.detail.xhr.status}). Reload the page and try again.`);
  });
  document.body.addEventListener("htmx:sendError", () => {
    show("The portal is not answering. Check your connection; the page retries by itself where it polls.");
  });
  document.body.addEventListener("htmx:afterRequest", (event) => {
    if (event.detail.successful) alertBox.hidden = true;
  });
});

// The inbox's bulk decision: picking requests (or all of them) asks the server for the capacity impact
// per pool of approving the selection (the region listens for "bulk-changed"; htmx runs without eval,
// so the wiring lives here rather than in an event filter).
document.addEventListener("change", (event) => {
  const target = event.target;
  if (!(target instanceof HTMLInputElement)) return;
  if (target.classList.contains("bulk-all")) {
    document.querySelectorAll("input.bulk-select").forEach((box) => {
      box.checked = target.checked;
    });
  } else if (!target.classList.contains("bulk-select")) {
    return;
  }
  const region = document.getElementById("bulk-impact");
  if (region && window.htmx) window.htmx.trigger(region, "bulk-changed");
});
