"""`musicsteer eval`: the paper's §IV evaluation of genre steering.

protocol   what is generated: transitions, prompts, seeds, α sweep, hold, fusion (the exact protocol)
plan       the clips that protocol needs, their identities and batches
clips      generating the clips, resumably (reused when their settings match)
clap       CLAP zero-shot genre scores (the paper's pipeline computation); tiny_clap: offline test CLAP
hold       scoring a held continuation span by span
metrics    Table I arithmetic (Δ target-genre score, mean ± std), 95 % intervals, Table I's Markdown
effect     the effect studies: α curve, cross-effect, hold drift, fusion, the α = 0 check
report     results.json, table.md, alpha_sweep.png; effect_report: the studies' CSVs and plots
listening  2AFC trials and the self-contained HTML page (page: its template)
twoafc     scoring the page's answers CSVs: accuracy and exact binomial p-values (Table II)
runner     the whole run, in order
"""
