// The demo page: the bundle served at /bundle/, top-3 labels as bars, updated as you type.
import { loadFromUrl } from "/js/browser.js";

const $ = (id) => document.getElementById(id);
ort.env.wasm.wasmPaths = "/ort/";
ort.env.wasm.numThreads = 1; // threads need cross-origin isolation; one text is fast enough on one

const state = { ready: false, lastText: null, predictor: null };
window.seqship = state;

function render(text, result) {
  $("results").replaceChildren(
    ...result.topK.map(({ label, score }) => {
      const row = document.createElement("div");
      row.className = "row";
      row.innerHTML = `<span class="label"></span><div class="track"><div class="bar"></div></div><span class="score"></span>`;
      row.querySelector(".label").textContent = label;
      row.querySelector(".bar").style.width = `${(score * 100).toFixed(1)}%`;
      row.querySelector(".score").textContent = `${(score * 100).toFixed(1)}%`;
      return row;
    }),
  );
  $("error").textContent = result.truncated ? `only the first ${result.numTokens} tokens were read` : "";
}

let pending = Promise.resolve();
async function update() {
  const text = $("text").value;
  pending = pending.then(async () => {
    try {
      if (!text.trim()) {
        $("results").replaceChildren();
        $("error").textContent = "";
      } else {
        const [result] = await state.predictor.predict([text], Math.min(3, state.predictor.labels.length));
        if ($("text").value !== text) return; // a newer keystroke will render
        render(text, result);
      }
    } catch (e) {
      $("results").replaceChildren();
      $("error").textContent = e.message;
    }
    state.lastText = text;
  });
  await pending;
}

// ?unicodeMismatch=warn scores texts with code points this browser's Unicode tables may not know
// (a browser does not report its Unicode version, so by default such texts are refused, with the reason).
const params = new URLSearchParams(location.search);

try {
  state.predictor = await loadFromUrl("/bundle/", { unicodeMismatch: params.get("unicodeMismatch") === "warn" ? "warn" : "refuse" });
  const m = state.predictor.manifest;
  const accuracy = m.metrics && typeof m.metrics.test_accuracy === "number" ? `, test accuracy ${(m.metrics.test_accuracy * 100).toFixed(1)}%` : "";
  $("status").textContent = `${m.name}: ${m.labels.length} labels${accuracy}, running in your browser (onnxruntime-web, WebAssembly); bundle sha256 ${state.predictor.digest.slice(0, 12)}…`;
  $("text").disabled = false;
  $("text").addEventListener("input", update);
  $("text").focus();
  state.ready = true;
} catch (e) {
  $("status").textContent = `could not load the bundle: ${e.message}`;
  state.error = e.message;
}
