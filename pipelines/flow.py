"""Run the Prefect flow `cocosnet-pipeline` (cocosnet/flow.py): `python -m pipelines.flow [--targets STAGE ...]`."""

from cocosnet.flow import main

if __name__ == "__main__":
    main()
