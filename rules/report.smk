# The HTML report of all experiments (also reachable through `snakemake --report`).


rule report:
    input:
        metrics=[str(paths.metrics(e, s)) for e, s in pipeline_workflow.experiment_tests(EXPERIMENTS)],
        models=pipeline_workflow.model_dirs(EXPERIMENTS),
        stats=[str(paths.stats(d)) for d in DATASETS],
    output:
        html=report(
            str(paths.report()),
            caption="../docs/report.rst",
            category="Report",
        ),
        plots=report(
            directory(str(paths.report_plots())),
            patterns=["{name}.png"],
            caption="../docs/report.rst",
            category="Plots",
        ),
        tables=[str(paths.experiment_table(e)) for e in EXPERIMENTS],
        summary=str(paths.summary_table()),
    log:
        str(paths.log("report")),
    benchmark:
        str(paths.benchmark("report"))
    params:
        code=code_version("report"),
        config=RESOLVED_CONFIG,
    threads: family_threads("report")
    resources:
        **family_resources("report"),
    conda:
        ENV
    shell:
        "lmmvqa report --config {params.config} --out {output.html} --plots {output.plots} > {log} 2>&1"
