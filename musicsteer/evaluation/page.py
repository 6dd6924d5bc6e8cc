"""The listening-test page template (HTML + CSS + JS in one string; listening.py fills it in).

Kept apart from listening.py because it is markup, not logic. It loads nothing from the network.
__TITLE__ is replaced by the escaped title, __DATA__ by a JSON object {"trials": [...], "columns": [...]}.
The page never shows which clip is steered: only A and B, and the transition being judged.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; }
  .clip { display: flex; align-items: center; gap: 1rem; margin: .75rem 0; }
  .clip h3 { margin: 0; width: 1.5rem; }
  audio { flex: 1; }
  button { font-size: 1rem; padding: .5rem 1.25rem; margin-right: .5rem; cursor: pointer; }
  button.chosen { outline: 3px solid #2a7; }
  #transition { margin-bottom: 0; }
  #progress, #count { color: #555; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<section id="intro">
  <p>Each trial plays two clips, <b>A</b> and <b>B</b>. Both continue the same piece of music from one genre
  toward another. Listen to both in full (you may replay them as often as you like), then choose the clip
  that better achieves a perceptually coherent blend of the two genres. There is no time limit.</p>
  <p><label>Your name or participant code (optional): <input id="participant" autocomplete="off"></label></p>
  <button id="start">Start</button>
</section>
<section id="trial" hidden>
  <p id="progress"></p>
  <h2 id="transition"></h2>
  <div class="clip"><h3>A</h3><audio id="audio-a" controls preload="none"></audio></div>
  <div class="clip"><h3>B</h3><audio id="audio-b" controls preload="none"></audio></div>
  <p>Which clip is the better blend of <span id="genres"></span>?</p>
  <p><button id="choose-a">A</button><button id="choose-b">B</button></p>
  <p><button id="back">&larr; Previous trial</button></p>
</section>
<section id="done" hidden>
  <p>All trials answered &mdash; thank you. Download your answers below and send the file to the experimenter.</p>
  <p><button id="review">&larr; Review the last trial</button></p>
</section>
<p><a id="download" href="#" download="answers.csv" hidden>Download answers (CSV)</a> <span id="count"></span></p>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const trials = DATA.trials;
const answers = trials.map(() => null);  // {choice, position} per trial
const plays = trials.map(() => ({a: 0, b: 0}));
const $ = (id) => document.getElementById(id);
let current = 0, url = null, saved = true;

function csvField(value) {
  const s = String(value === undefined || value === null ? "" : value);
  return /[",\\r\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

function csvText() {
  const who = $("participant").value.trim();
  const rows = [DATA.columns.join(",")];
  trials.forEach((t, i) => {
    const answer = answers[i];
    if (!answer) return;
    const record = {trial_id: t.trial_id, pair: t.pair, clip: t.clip, choice: answer.choice, order: t.order,
                    position: answer.position, plays_a: plays[i].a, plays_b: plays[i].b, participant: who};
    rows.push(DATA.columns.map((c) => csvField(record[c])).join(","));
  });
  return rows.join("\\r\\n") + "\\r\\n";
}

function refreshDownload() {
  const done = answers.filter(Boolean).length;
  if (url) URL.revokeObjectURL(url);
  url = URL.createObjectURL(new Blob([csvText()], {type: "text/csv"}));
  const link = $("download");
  const who = $("participant").value.trim().replace(/[^A-Za-z0-9_-]+/g, "_");
  link.href = url;
  link.download = who ? "answers-" + who + ".csv" : "answers.csv";
  link.hidden = done === 0;
  $("count").textContent = done + " of " + trials.length + " trials answered";
}

function stopAudio() {
  for (const side of ["a", "b"]) $("audio-" + side).pause();
}

function show(i) {
  current = i;
  const t = trials[i];
  const [source, target] = t.pair.split(":");
  stopAudio();
  $("progress").textContent = "Trial " + (i + 1) + " of " + trials.length;
  $("transition").textContent = source + " \\u2192 " + target;
  $("genres").textContent = source + " and " + target;
  for (const side of ["a", "b"]) {
    $("audio-" + side).src = t[side];
    $("choose-" + side).classList.toggle("chosen", !!answers[i] && answers[i].position === side.toUpperCase());
  }
  $("back").disabled = i === 0;
  $("trial").hidden = false;
  $("done").hidden = true;
}

function choose(position) {
  const t = trials[current];
  const steeredIsA = t.order === "steered-first";
  answers[current] = {choice: (position === "A") === steeredIsA ? "steered" : "prompted", position: position};
  saved = false;
  refreshDownload();
  if (current + 1 < trials.length) {
    show(current + 1);
  } else {
    stopAudio();
    $("trial").hidden = true;
    $("done").hidden = false;
  }
}

for (const side of ["a", "b"]) {
  $("audio-" + side).addEventListener("play", () => { plays[current][side] += 1; refreshDownload(); });
  $("choose-" + side).addEventListener("click", () => choose(side.toUpperCase()));
}
$("start").addEventListener("click", () => { $("intro").hidden = true; show(0); });
$("back").addEventListener("click", () => { if (current > 0) show(current - 1); });
$("review").addEventListener("click", () => show(trials.length - 1));
$("participant").addEventListener("input", refreshDownload);
$("download").addEventListener("click", () => { saved = true; });
window.addEventListener("beforeunload", (e) => { if (!saved) { e.preventDefault(); e.returnValue = ""; } });
refreshDownload();
</script>
</body>
</html>
"""
