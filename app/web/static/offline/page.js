// A saved comparison as one HTML page that works from the file alone: opened from disk
// (file://), with no server, it draws the comparison its data holds and opens other saved
// comparisons. Browsers load no ES module files from file:// pages, so the modules that
// draw it travel inside the page as one inline module: each module becomes a function
// scope, and its imports read the exports of the modules bundled before it.

const STATIC = new URL("../", import.meta.url); // app/web/static/
// Dependencies first.
const MODULES = ["dom.js", "colors.js", "panels/saved.js", "panels/compare-view.js", "offline/boot.js"];
const IMPORT = /^import\s*\{([^}]*)\}\s*from\s*"([^"]+)";?[ \t]*$/gm;
const EXPORT = /^export\s+((?:async\s+)?(?:function\*?|class|const|let))\s+([\w$]+)/gm;

/** The page for `run` (a comparison in the saved JSON form), as HTML text. */
export async function comparisonPage(run) {
  const [css, ...sources] = await Promise.all(["viewer.css", ...MODULES].map(staticText));
  const script = bundle(MODULES.map((path, i) => ({ path, source: sources[i] })));
  // Inside <script>, only "</script" (any case) or "<!--" could end or change the data:
  // escaping every "<" keeps the JSON the same JSON and the page whole.
  const data = JSON.stringify(run).replaceAll("<", "\\u003c");
  const title = `llmviz comparison: ${run.model}`.replaceAll("&", "&amp;").replaceAll("<", "&lt;");
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title}</title>
<style>
${css}
</style>
</head>
<body>
<main class="saved-comparison">
  <section class="panel wide" id="intervene-panel">
    <h2>Intervene and compare: a saved comparison</h2>
    <p class="saved-about" data-testid="saved-about"></p>
    <ul class="interventions" data-testid="interventions" aria-label="Interventions"></ul>
    <label class="open-run">Open another saved comparison <input type="file" accept="application/json,.json,.html" data-testid="open-run"></label>
    <p class="compare-status" aria-live="polite"></p>
    <table class="compare" data-testid="compare-view"></table>
    <div class="internals" data-testid="internals"></div>
  </section>
</main>
<script type="application/json" id="llmviz-run">${data}</script>
<script type="module">
${script}
</script>
</body>
</html>
`;
}

/**
 * ES modules `[{path, source}]` (paths relative to app/web/static/, each importing only
 * modules before it) as one script. Knows `import { a, b as c } from "./x.js"` and
 * `export function|class|const|let name`; any other import or export form is an error,
 * so a module written another way fails here, not silently in a saved page.
 */
export function bundle(modules) {
  const done = new Set();
  const parts = modules.map(({ path, source }) => {
    const names = [];
    const body = source
      .replace(IMPORT, (_, imported, from) => {
        const target = new URL(from, new URL(path, "file:///")).pathname.slice(1);
        if (!done.has(target)) throw new Error(`${path} imports ${target}, not bundled before it`);
        return `const {${imported.replace(/\s+as\s+/g, ": ")}} = modules[${JSON.stringify(target)}];`;
      })
      .replace(EXPORT, (_, keyword, name) => {
        names.push(name);
        return `${keyword} ${name}`;
      });
    if (/^\s*(import|export)\b/m.test(body)) throw new Error(`${path}: an import or export the bundler does not know`);
    done.add(path);
    return `modules[${JSON.stringify(path)}] = (() => {\n${body}\nreturn { ${names.join(", ")} };\n})();`;
  });
  return `const modules = {};\n${parts.join("\n")}`;
}

async function staticText(path) {
  const response = await fetch(new URL(path, STATIC));
  if (!response.ok) throw new Error(`${path}: ${response.status} ${response.statusText}`);
  return response.text();
}
