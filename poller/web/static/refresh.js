// Every few seconds, fetch this page again and swap in its <main> (the page works without this;
// the filters stay outside <main>, so that what someone is typing there is kept).
const every = 1000 * Number(document.body.dataset.refresh || 5);
async function refresh() {
  const answer = await fetch(location.href, { cache: "no-store" });
  if (!answer.ok) return;
  const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
  document.querySelector("main").replaceWith(fresh.querySelector("main"));
}
setInterval(() => refresh().catch(() => {}), every);
