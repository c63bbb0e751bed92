"""Dataset intake: fetch, extract safely, validate, bucket and report. Plain Python, no Prefect."""
