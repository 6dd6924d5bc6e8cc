"""`musicsteer eval`: the paper's §IV evaluation of genre steering.

protocol   what is generated: transitions, prompts, seeds, α sweep (the exact protocol)
clips      generating the clips, resumably (reused when their settings match)
clap       CLAP zero-shot genre scores (the paper's pipeline computation); tiny_clap: offline test CLAP
metrics    Table I arithmetic (Δ target-genre score, mean ± std) and its Markdown
report     results.json, table.md, alpha_sweep.png
listening  2AFC trials and the self-contained HTML page (page: its template)
twoafc     scoring the page's answers CSVs: accuracy and exact binomial p-values (Table II)
runner     the whole run, in order
"""
