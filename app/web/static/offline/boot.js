// The script of a saved comparison page (offline/page.js builds it): draws the comparison
// the page holds, and any saved comparison the reader opens: a .json file, or another page.

import {
  describeIntervention,
  describeSettings,
  divergenceNote,
  drawTokens,
  InternalsView,
} from "../panels/compare-view.js";
import { readSaved } from "../panels/saved.js";

const $ = (selector) => document.querySelector(selector);
const internals = new InternalsView($("[data-testid=internals]"));

function show(run, source) {
  document.title = `llmviz comparison: ${run.model}`;
  $("[data-testid=saved-about]").textContent =
    `${source}: “${run.prompt}” on ${run.model}; ${describeSettings(run.settings ?? {})}.`;
  $("[data-testid=interventions]").replaceChildren(
    ...(run.interventions ?? []).map((item) => Object.assign(document.createElement("li"), { textContent: describeIntervention(item) })),
  );
  drawTokens($("[data-testid=compare-view]"), run);
  $("[data-testid=compare-view]").dataset.state = "done";
  $(".compare-status").textContent = divergenceNote(run);
  if (run.internals) internals.show(run.internals);
  else internals.clear("This comparison was saved without internals.");
}

$("[data-testid=open-run]").addEventListener("change", async (event) => {
  const file = event.target.files?.[0];
  if (!file) return;
  try {
    show(readSaved(await file.text()), `Opened ${file.name}`);
  } catch (error) {
    $(".compare-status").textContent = `Cannot open ${file.name}: ${error.message}`;
  }
});

show(readSaved($("#llmviz-run").textContent), "Saved comparison");
