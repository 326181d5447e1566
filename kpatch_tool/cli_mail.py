"""`kpt mail NAME`: one thread per tree, gates, recipients, versions, sending."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.text import Text

STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def register(main):
    from kpatch_tool.cli import console, say

    @main.command("mail")
    @click.argument("name")
    @click.option("--version", "version", type=int, default=None, help="Version to label (default: series.toml's).")
    @click.option("--out", type=click.Path(file_okay=False), default=None,
                  help="Write the mails here (default: out/mail/NAME-vN/); one folder per tree.")
    @click.option("--tree", default=None, help="Only this tree's thread.")
    @click.option("--send", "do_send", is_flag=True, help="Send with git send-email (needs sendemail.smtpServer).")
    @click.option("--dry-run", is_flag=True, help="Show what git send-email would send; send nothing.")
    @click.option("--force", is_flag=True, help="Mail even when a gate (checkpatch, signoff...) failed.")
    @click.option("--reroll", is_flag=True, help="Tag what was sent as kpt/NAME/vN and move series.toml to vN+1.")
    @click.option("--no-range-diff", is_flag=True, help="Do not require the previous version's tag.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @click.pass_obj
    def mail_cmd(obj, name, version, out, tree, do_send, dry_run, force, reroll, no_range_diff, as_json):
        """Format a series as mail threads (one per tree), check it, and optionally send it.

        Writes one file per mail and an mbox per tree; the gates (checkpatch,
        Signed-off-by, Fixes:, subject) must pass before anything is sent.

        \b
        Example: kpt mail netback-per-vif --dry-run
        Example: kpt mail netback-per-vif --send
        Example: kpt mail netback-per-vif --reroll
        """
        from kpatch_tool import mail
        from kpatch_tool.errors import UsageError

        if reroll:
            if do_send or dry_run:
                raise UsageError("--reroll tags what was already sent; run it on its own after sending")
            res = mail.reroll(obj.ws, name, progress=say)
            for t, sha in res.tags.items():
                console.print(f"{t}: tagged {mail.tag_name(name, res.sent)} at {sha[:12]}")
            console.print(f"{name}: now v{res.next} in series.toml (changelog stub added: describe v{res.next})")
            return
        if do_send and dry_run:
            raise UsageError("--send and --dry-run exclude each other")
        if do_send and not mail.smtp_configured(obj.ws.root):
            # Say so before minutes of applying and checking.
            raise UsageError(f"git send-email has no SMTP server configured; nothing sent: {mail.SMTP_HINT}")
        res = mail.prepare(obj.ws, name, version=version, out=Path(out) if out else None, force=force,
                           progress=say, tree=tree, range_diff_=not no_range_diff)
        if as_json:
            click.echo(json.dumps(res.to_dict(), indent=1))
        else:
            for t, tm in res.trees.items():
                console.print(Text.assemble((t, "bold"), f": {tm.subject}  ({len(tm.patches)} patches)"))
                for g in tm.gates:
                    style = STATUS_STYLE.get(g.status, "")
                    extra = f" - {g.note}" if g.note and g.status == "skip" else ""
                    console.print(Text.assemble(f"  gate {g.name:<10} ", (g.status, style), extra))
                    for e in g.errors:
                        console.print(f"    error: {e}", markup=False)
                    for w in g.warnings:
                        console.print(f"    warning: {w}", markup=False)
                console.print(f"  To: {', '.join(tm.recipients.to) or '-'}", markup=False)
                console.print(f"  Cc: {', '.join(tm.recipients.cc) or '-'}", markup=False)
                console.print(f"  files: {tm.out_dir}  mbox: {tm.mbox.name}", markup=False)
        if res.blocked and not force:
            names = ", ".join(f"{t}:{g.name}" for t, g in res.failed_gates())
            raise UsageError(f"gates failed ({names}); files written to {res.out}, nothing sent "
                             f"(fix the patches, or --force)")
        if do_send or dry_run:
            outputs = mail.send(res, dry_run=dry_run, force=force, say=say)
            if dry_run:
                for t, text in outputs.items():
                    click.echo(f"--- {t}: git send-email --dry-run")
                    click.echo(text.rstrip("\n"))
            else:
                console.print(f"sent {sum(len(t.files) for t in res.trees.values())} mails")
