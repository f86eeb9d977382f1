"""gpufleet.reports: per-tenant usage reports and the fleet chargeback, read from InfluxDB.

    query.py        InfluxQL and line-protocol writes over HTTP (the only InfluxDB I/O)
    model.py        pure: rows -> figures, tenant reports, chargeback and its reconciliation
    rollup.py       rows of a period: live from the raw measurements or from the hourly rollup
    document.py     pure: what a tenant's report shows, as blocks (HTML and PDF lay out the same ones)
    charts.py       pure: bar charts as shapes, and as inline SVG
    render_html.py  render_json.py  render_csv.py   pure renderers
    render_pdf.py   pure: the blocks laid out on A4 pages as a tagged PDF
    pdf_file.py     pure: a PDF file's objects, streams and cross-reference table
    fonts.py        the DejaVu fonts the PDF embeds (metrics, subsets; the only font I/O)
    mail.py         SMTP with STARTTLS (the only SMTP I/O)
    settings.py     the report TOML ([influx], [prices], [[reference]], [mail], [rollup])
    main.py         run_report / run_rollup, what the CLI calls
"""
