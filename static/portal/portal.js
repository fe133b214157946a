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
