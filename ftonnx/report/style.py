"""The report page's style sheet, inline in the page (its policy allows inline styles and nothing else)."""

CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#e3e6ec;--bg:#f6f7f9;--card:#fff;--bad:#c62828;--best:#d62728}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif}
main{max-width:1320px;margin:0 auto;padding:20px 24px 32px}
h1{font-size:22px;margin:0 0 2px}
header p{margin:0;color:var(--muted);overflow-wrap:anywhere}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin:16px 0}
h2{font-size:16px;margin:0 0 10px}
h3{font-size:13px;margin:14px 0 6px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:10px;margin-top:16px}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 14px}
.kpi b{display:block;font-size:22px;font-variant-numeric:tabular-nums}
.kpi span{color:var(--muted);font-size:12px}
img.plot{display:block;max-width:100%;height:auto}
.cm{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.cm-picture{position:relative;flex:0 1 auto;max-width:100%}
.cm-picture img{display:block;max-width:100%;height:auto}
a.cm-cell{position:absolute;display:block}
a.cm-cell:hover{outline:2px solid #ff9800;z-index:2}
.scroll{max-height:540px;overflow:auto;border:1px solid var(--line);border-radius:6px}
.hscroll{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:4px 9px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#f0f2f6;font-weight:600;position:sticky;top:0;z-index:1}
th.name,td.name{text-align:left;max-width:280px;overflow:hidden;text-overflow:ellipsis}
tr.average td{font-weight:600;background:#fafbfc}
tr.best td{color:var(--best);font-weight:600}
table.counts td{min-width:34px;text-align:center;padding:3px 6px}
table.counts td.zero{color:#c3c8d1}
table.counts td.diagonal{font-weight:700}
td.bar{background:linear-gradient(90deg,var(--colour) var(--share),transparent var(--share))}
.facts-grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:4px 28px}
table.facts{width:100%}
table.facts td:first-child{text-align:left;color:var(--muted);width:1%}
table.facts td:last-child{text-align:left;white-space:normal;overflow-wrap:anywhere}
.mistakes{display:grid;grid-template-columns:repeat(auto-fill,minmax(132px,1fr));gap:10px}
figure.mistake{margin:0;padding:6px;border:1px solid var(--line);border-radius:8px;background:#fcfcfd}
figure.mistake div{height:96px;display:flex;align-items:center;justify-content:center;margin-bottom:5px}
figure.mistake img{display:block;max-width:96px;max-height:96px;border-radius:4px}
figure.mistake figcaption{font-size:11.5px;line-height:1.3;overflow-wrap:anywhere}
.muted{color:var(--muted)}
.wrong{color:var(--bad);font-weight:600}
.note{color:var(--muted);font-size:12.5px;margin:6px 0 0}
.best{color:var(--best)}
footer{color:var(--muted);font-size:12px;text-align:center}
"""
