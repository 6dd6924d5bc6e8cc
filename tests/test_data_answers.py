"""`eval score-2afc` counts each listener's answer to a trial once (issue 28, item 6).

Every way the same answers can reach the scorer twice: a browser's second download picked up by
README's glob beside the first, one CSV holding a line twice, the same file named twice, two copies of
an answers file without a participant code, and the listening page's own downloads, made by headless
Chromium (a download twice, a partial download, then an answer changed on review). The same trial
answered differently, or the same clips judged under two trial numbers, is refused in one line.
Real CSV files, the real CLI.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import chromium, cli_error
from scipy.stats import binomtest
from test_eval_support import run_cli

from musicsteer.evaluation import listening, twoafc

COLUMNS = "trial_id,pair,clip,choice,order,position,plays_a,plays_b,participant"


def answers(who: str, choices: str, pair: str = "jazz:rock", first: int = 1) -> str:
    """A page's CSV: one row per letter of `choices` (s: steered, p: prompted), trials from `first`."""
    lines = [COLUMNS]
    for i, letter in enumerate(choices):
        choice = "steered" if letter == "s" else "prompted"
        lines.append(f"{first + i},{pair},{i},{choice},steered-first,{'A' if letter == 's' else 'B'},1,1,{who}")
    return "\n".join(lines) + "\n"


def score(capsys, *files: Path, alternative: str = "greater") -> tuple[dict, str]:
    capsys.readouterr()
    result = twoafc.score(twoafc.read_answers(list(files)), alternative)
    return result, capsys.readouterr().err


def p_greater(k: int, n: int) -> float:
    return float(binomtest(k, n, 0.5, "greater").pvalue)


def test_a_second_download_picked_up_by_the_glob_is_counted_once_with_a_warning(tmp_path, capsys) -> None:
    # The named example: jazz -> rock, one-sided, 25 of 40 (p 0.077); alice's 13 answers (9 steered) read
    # twice made it 34 of 53 (p 0.026).
    (tmp_path / "answers-alice.csv").write_text(answers("alice", "sssssssssp" + "ppp"))
    (tmp_path / "answers-alice (1).csv").write_text(answers("alice", "sssssssssp" + "ppp"))
    (tmp_path / "answers-bob.csv").write_text(answers("bob", "ssssssssppppp"))
    (tmp_path / "answers-carol.csv").write_text(answers("carol", "sssssssspppppp"))
    files = sorted(Path(p) for p in glob.glob(str(tmp_path / "answers-*.csv")))
    assert len(files) == 4
    result, err = score(capsys, *files)
    row = result["pairs"]["jazz:rock"]
    assert (row["n"], row["steered"]) == (40, 25)
    assert row["p_value"] == pytest.approx(p_greater(25, 40)) and round(row["p_value"], 3) == 0.077
    assert err.splitlines() == [f"musicsteer: warning: {tmp_path}/answers-alice.csv repeats 13 answer(s) of "
                                f"{tmp_path}/answers-alice (1).csv (the same listener, trial and choice): "
                                "counted once"]
    # through the command, with README's glob: the same table, exit 0
    capsys.readouterr()
    assert run_cli(["eval", "score-2afc", *map(str, files), "--alternative", "greater"]) == 0
    out, err = capsys.readouterr()
    assert "| jazz → rock | 40 | 25 | 0.625 | 0.0769 |" in out and "counted once" in err


def test_a_csv_holding_a_line_twice_counts_it_once(tmp_path, capsys) -> None:
    text = answers("dana", "ssp")
    (tmp_path / "a.csv").write_text(text + text.splitlines()[2] + "\n")  # trial 2 again, same answer
    result, err = score(capsys, tmp_path / "a.csv")
    assert (result["all"]["n"], result["all"]["steered"]) == (3, 2)
    assert err.splitlines() == [f"musicsteer: warning: {tmp_path}/a.csv repeats 1 answer(s) of itself (the "
                                "same listener, trial and choice): counted once"]


def test_the_same_file_named_twice_counts_once(tmp_path, capsys) -> None:
    (tmp_path / "a.csv").write_text(answers("erin", "sps"))
    result, err = score(capsys, tmp_path / "a.csv", tmp_path / "a.csv")
    assert result["all"]["n"] == 3 and "repeats 3 answer(s) of itself" in err


def test_answers_without_a_participant_code(tmp_path, capsys) -> None:
    # no code: each file is its own listener, so two listeners' files with the same trial numbers both count;
    # a file equal to an earlier one in every column is the same download saved twice, counted once
    (tmp_path / "answers.csv").write_text(answers("", "sssp"))
    (tmp_path / "answers (1).csv").write_text(answers("", "sssp"))
    (tmp_path / "other.csv").write_text(answers("", "pppp"))
    result, err = score(capsys, tmp_path / "answers.csv", tmp_path / "answers (1).csv", tmp_path / "other.csv")
    assert (result["all"]["n"], result["all"]["steered"]) == (8, 3)
    assert err.splitlines() == [f"musicsteer: warning: {tmp_path}/answers (1).csv repeats 4 answer(s) of "
                                f"{tmp_path}/answers.csv (the same listener, trial and choice): counted once"]
    # the old format without the participant and clip columns: the same rules
    (tmp_path / "old.csv").write_text("trial_id,pair,choice\n1,jazz:rock,steered\n1,jazz:rock,steered\n")
    result, err = score(capsys, tmp_path / "old.csv")
    assert result["all"]["n"] == 1 and "repeats 1 answer(s) of itself" in err


def test_the_same_trial_answered_differently_is_refused_in_one_line(tmp_path, capsys) -> None:
    (tmp_path / "answers-alice.csv").write_text(answers("alice", "sss"))
    (tmp_path / "answers-alice (1).csv").write_text(answers("alice", "ssp"))
    line = cli_error(["eval", "score-2afc", str(tmp_path / "answers-alice.csv"),
                      str(tmp_path / "answers-alice (1).csv")], capsys)
    assert line == (f"musicsteer: error: participant 'alice' answered trial 3 twice, differently: jazz:rock clip 2 "
                    f"steered ({tmp_path}/answers-alice.csv line 4) and jazz:rock clip 2 prompted "
                    f"({tmp_path}/answers-alice (1).csv line 4); keep only the file with the final answers")
    text = answers("", "ss")  # within one file, without a code
    (tmp_path / "one.csv").write_text(text + text.splitlines()[1].replace("steered", "prompted") + "\n")
    assert "the listener of" in cli_error(["eval", "score-2afc", str(tmp_path / "one.csv")], capsys)


def test_the_same_clips_under_two_trial_numbers_are_refused(tmp_path, capsys) -> None:
    # one listener's answers from two pages (another --trial-seed numbers the trials otherwise)
    (tmp_path / "a.csv").write_text(answers("fay", "ss"))
    (tmp_path / "b.csv").write_text(answers("fay", "ss", first=5))
    line = cli_error(["eval", "score-2afc", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], capsys)
    assert "participant 'fay' judged jazz:rock clip 0 twice, as trial 1 and trial 5" in line
    assert "answers of two listening pages cannot be pooled" in line


def test_empty_trial_id_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "a.csv").write_text("trial_id,pair,choice\n,jazz:rock,steered\n")
    assert "a.csv line 2: empty trial_id" in cli_error(["eval", "score-2afc", str(tmp_path / "a.csv")], capsys)


def test_the_listening_pages_own_downloads(tmp_path, capsys) -> None:
    """The page in headless Chromium: answers downloaded midway, at the end, and again (the browser names the
    copies `answers-alice (1).csv`, ...), then the last answer changed on review and downloaded once more."""
    from selenium.webdriver.common.by import By

    page = tmp_path / "page"
    (page / "clips").mkdir(parents=True)
    for name in ("s0", "p0", "s1", "p1"):  # 0.2 s of quiet noise: the page only needs files to point at
        sf.write(page / "clips" / f"{name}.wav", np.random.default_rng(0).normal(0, 0.01, 3200), 16000)
    trials = listening.make_trials({"jazz:rock": [("clips/s0.wav", "clips/p0.wav"),
                                                  ("clips/s1.wav", "clips/p1.wav")]}, seed=3)
    listening.write_page(page / "listening_test.html", trials)
    downloads = tmp_path / "downloads"
    driver = chromium(tmp_path / "profile", prefs={"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False,
                                                  "profile.default_content_setting_values.automatic_downloads": 1})

    def choose(trial: dict, want: str) -> None:
        position = "a" if (want == "steered") == (trial["order"] == "steered-first") else "b"
        driver.find_element(By.ID, f"choose-{position}").click()

    def download(name: str) -> Path:
        driver.find_element(By.ID, "download").click()
        target = downloads / name
        for _ in range(200):
            if target.is_file() and target.stat().st_size:
                return target
            time.sleep(0.05)
        raise AssertionError(f"no {name} in {sorted(p.name for p in downloads.glob('*'))}")

    try:
        driver.get((page / "listening_test.html").as_uri())
        driver.find_element(By.ID, "participant").send_keys("alice")
        driver.find_element(By.ID, "start").click()
        choose(trials[0], "steered")
        partial = download("answers-alice.csv")  # midway: one answer
        choose(trials[1], "steered")
        final = download("answers-alice (1).csv")
        again = download("answers-alice (2).csv")
        driver.find_element(By.ID, "review").click()  # back to the last trial: a change of mind
        choose(trials[1], "prompted")
        download("answers-alice (3).csv")
    finally:
        driver.quit()
    result, err = score(capsys, partial, final, again)
    assert (result["all"]["n"], result["all"]["steered"]) == (2, 2)
    assert err.splitlines() == [
        f"musicsteer: warning: {final} repeats 1 answer(s) of {partial} (the same listener, trial and choice): "
        "counted once",
        f"musicsteer: warning: {again} repeats 2 answer(s) of {partial}, {final} (the same listener, trial and "
        "choice): counted once"]
    line = cli_error(["eval", "score-2afc", *glob.glob(str(downloads / "answers-*.csv"))], capsys)
    assert f"participant 'alice' answered trial {trials[1]['trial_id']} twice, differently" in line
    assert "keep only the file with the final answers" in line


def test_an_anonymous_listeners_partial_or_replayed_download_is_counted_once(tmp_path, capsys) -> None:
    # Found by the hostile review: the page offers a download after the first answer, and both downloads
    # are answers.csv / answers (1).csv without a participant code; a partial one, or one after a replay
    # (only plays_a differs), was pooled as a second listener.
    full = answers("", "ssppss")
    (tmp_path / "partial.csv").write_text("".join(full.splitlines(keepends=True)[:4]))
    (tmp_path / "full.csv").write_text(full)
    (tmp_path / "replayed.csv").write_text(full.replace(",1,1,\n", ",2,1,\n", 1))
    assert (tmp_path / "replayed.csv").read_text() != full
    for files in (("partial.csv", "full.csv"), ("full.csv", "replayed.csv")):
        result, err = score(capsys, *(tmp_path / f for f in files))
        assert result["pairs"]["jazz:rock"]["n"] == 6, files
        assert "counted once" in err and files[0] in err
    (tmp_path / "other.csv").write_text(answers("", "pppsss"))
    result, err = score(capsys, tmp_path / "full.csv", tmp_path / "other.csv")
    assert result["pairs"]["jazz:rock"]["n"] == 12 and "counted once" not in err  # another listener


def test_spelling_variants_of_a_participant_code_are_one_listener(tmp_path, capsys) -> None:
    names = ("alice", "Alice", "alice\u200b", " ALICE")
    for i, name in enumerate(names):
        (tmp_path / f"a{i}.csv").write_text(answers(name, "sspsps"))
    result, err = score(capsys, *sorted(tmp_path.glob("a*.csv")))
    assert result["pairs"]["jazz:rock"]["n"] == 6
    assert "are one listener" in err
    (tmp_path / "jose1.csv").write_text(answers("Jos\u00e9", "ssssss"))
    (tmp_path / "jose2.csv").write_text(answers("Jose\u0301", "ssssss"))
    result, _ = score(capsys, tmp_path / "jose1.csv", tmp_path / "jose2.csv")
    assert result["pairs"]["jazz:rock"]["n"] == 6
