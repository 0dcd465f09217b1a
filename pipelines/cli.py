"""The `fgid` command. Subcommands are imported only when run, so `fgid --help` is instant."""

from __future__ import annotations

import importlib

import click

# name -> "module:click_command". Each module owns its options (one-to-one with a config).
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("pipelines.build", "Photos -> FGID WebDataset shards + Parquet index (Ray)."),
    "stage": ("pipelines.stages", "Run one pipeline stage Parquet -> Parquet (for DVC)."),
    "export": ("pipelines.export_cmd", "Write the official ConsistentID folder + JSON layout."),
    "report": ("pipelines.eval_cmds", "Write the visual QA report of a built dataset."),
    "eval": ("pipelines.eval_cmds", "Score generated images against reference photos."),
    "generate": ("pipelines.generate_cmd", "Generate portraits with a trained adapter."),
    "train": ("pipelines.train_cmd", "Train ConsistentID on fgid shards (accelerate)."),
    "identities": ("pipelines.identity_cmds", "Give every sample an identity id (hnswlib)."),
    "split": ("pipelines.identity_cmds", "Identity-disjoint train/val/test splits."),
    "erase": ("pipelines.identity_cmds", "Remove people (shards rewritten, receipt, opt-out)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return getattr(module, f"{name}_command")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fgid")
def main() -> None:
    """fgid: build identity-preserving portrait datasets (FGID) and train ConsistentID on them."""


if __name__ == "__main__":
    main()
