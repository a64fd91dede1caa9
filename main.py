"""Train, evaluate, predict or export: `python main.py --config=configs/demo.py --workdir=...`.

The command line lives in `rankseg_jax/cli.py` (also installed as `rankseg-jax`); run
`python main.py --help` for the flags.
"""

from rankseg_jax.cli import run

if __name__ == "__main__":
    run()
