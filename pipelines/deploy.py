"""Deploy the flow `cocosnet-pipeline` on a Prefect process work pool (cocosnet/flow.py, docs/scale.md):
`python -m pipelines.deploy [--name demo] [--pool cocosnet] [--set key=value ...] [--pull] [--push]`."""

from cocosnet.flow import deploy_main

if __name__ == "__main__":
    deploy_main()
