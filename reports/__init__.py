"""gpufleet.reports: per-tenant usage reports and the fleet chargeback, read from InfluxDB.

    query.py        InfluxQL and line-protocol writes over HTTP (the only InfluxDB I/O)
    model.py        pure: rows -> figures, tenant reports, chargeback and its reconciliation
    rollup.py       rows of a period: live from the raw measurements or from the hourly rollup
    charts.py       pure: inline SVG bar charts
    render_html.py  render_json.py  render_csv.py   pure renderers
    render_pdf.py   HTML -> PDF with headless Chromium
    mail.py         SMTP with STARTTLS (the only SMTP I/O)
    settings.py     the report TOML ([influx], [prices], [[reference]], [mail], [rollup])
    main.py         run_report / run_rollup, what the CLI calls
"""
