"""`kpt mail NAME`: one thread per tree, gates, recipients, versions, sending."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.text import Text
from kpatch_tool.ui import console, say

STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}



def _print_threads(res) -> None:
    """Per tree: the cover's subject, each gate's outcome, the recipients and where the files are."""
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


@click.command("mail")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="Version to label (default: series.toml's).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write the mails here (default: out/mail/NAME-vN/); one folder per tree.")
@click.option("--tree", default=None, help="Only this tree's thread.")
@click.option("--send", "do_send", is_flag=True,
              help="Send over SMTP (git config sendemail.*, or kpt.toml [mail.smtp]); a rerun sends "
                   "only what the send journal does not list as accepted.")
@click.option("--resend", is_flag=True, help="Send every mail again, the ones the journal lists too.")
@click.option("--reflect", is_flag=True,
              help="Send every mail to yourself only, for a last look; the journal is left alone.")
@click.option("--dry-run", is_flag=True, help="Show what --send would send and skip; send nothing.")
@click.option("--force", is_flag=True, help="Mail even when a gate (checkpatch, signoff...) failed.")
@click.option("--reroll", is_flag=True, help="Tag what was sent as kpt/NAME/vN and move series.toml to vN+1.")
@click.option("--no-range-diff", is_flag=True, help="Do not require the previous version's tag.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def mail_cmd(obj, name, version, out, tree, do_send, resend, reflect, dry_run, force, reroll,
             no_range_diff, as_json):
    """Format a series as mail threads (one per tree), check it, and optionally send it.

    Writes one file per mail and an mbox per tree; the gates (checkpatch,
    Signed-off-by, Fixes:, subject, backport form) must pass before anything
    is sent. A placeholder identity (example.org, .invalid, ...) as author,
    sender or in a sign-off chain makes the mails a preview that is never
    sent, --force or not: take the series over with `kpt series signoff`.

    \b
    Example: kpt mail netback-per-vif --dry-run
    Example: kpt mail netback-per-vif --reflect
    Example: kpt mail netback-per-vif --send
    Example: kpt mail netback-per-vif --reroll
    """
    from kpatch_tool import mail, mailsend
    from kpatch_tool.errors import UsageError

    if reroll:
        if do_send or dry_run or resend or reflect:
            raise UsageError("--reroll tags what was already sent; run it on its own after sending")
        res = mail.reroll(obj.ws, name, progress=say)
        for t, sha in res.tags.items():
            console.print(f"{t}: tagged {mail.tag_name(name, res.sent)} at {sha[:12]}")
        console.print(f"{name}: now v{res.next} in series.toml (changelog stub added: describe v{res.next})")
        return
    if do_send and dry_run:
        raise UsageError("--send and --dry-run exclude each other")
    sending = do_send or resend or reflect
    toml = smtp_toml(obj.ws)
    if sending and not dry_run:
        # Say so before minutes of applying and checking.
        check_configured(obj.ws, name, tree, toml)
    res = mail.prepare(obj.ws, name, version=version, out=Path(out) if out else None, force=force,
                       progress=say, tree=tree, range_diff_=not no_range_diff)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=1))
    else:
        _print_threads(res)
    if res.unsendable:
        # A placeholder identity: the files are a preview (marked in every mail), never sent.
        raise UsageError(f"{mailsend.unsendable_message(res)}; a preview (not sendable) written to "
                         f"{res.out}, nothing sent (--force does not pass it)")
    if res.blocked and not force:
        names = ", ".join(f"{t}:{g.name}" for t, g in res.failed_gates())
        raise UsageError(f"gates failed ({names}); files written to {res.out}, nothing sent "
                         f"(fix the patches, or --force)")
    if not (sending or dry_run):
        return
    rep = mailsend.send(res, settings_for=lambda tm: mailsend.settings(tm.worktree, toml),
                        resend=resend, reflect=reflect, dry_run=dry_run, force=force, say=say)
    journal = res.out / mailsend.JOURNAL
    for w in rep.warnings:
        console.print(Text.assemble(("warning:", "yellow"), f" {w}"))
    if dry_run:
        for m in rep.mails:
            what = "already sent" if m.status == "sent" else "would send"
            click.echo(f"{what:<12} {m.label:<9} {m.message_id}  {m.subject}")
            if m.status == "todo":
                click.echo(f"{'':<12} to: {', '.join(m.to)}")
        for t, via in rep.via.items():
            click.echo(f"{t}: via {via}")
        click.echo(f"dry run: {len(rep.with_status('todo'))} to send, {len(rep.with_status('sent'))} "
                   f"already sent; nothing sent")
        return
    now, before = rep.with_status("done"), rep.with_status("sent")
    if not now:
        console.print(f"nothing to send: all {len(before)} mails are in the send journal {journal} "
                      f"(--resend sends them again)", markup=False, highlight=False)
        return
    via = "; ".join(f"{t} via {v}" for t, v in rep.via.items() if v)
    if reflect:
        console.print(f"reflected {len(now)} mails to {res.sender} only ({via}); the journal is unchanged",
                      markup=False, highlight=False)
        return
    earlier = f"; {len(before)} sent earlier" if before else ""
    console.print(f"sent {len(now)} mails ({via}){earlier}; journal: {journal}",
                  markup=False, highlight=False)


COMMANDS = [mail_cmd]


def smtp_toml(ws) -> dict:
    from kpatch_tool.errors import UsageError

    sect = (ws.data.get("mail") or {}).get("smtp") or {}
    if not isinstance(sect, dict):
        raise UsageError(f"{ws.root / 'kpt.toml'}: [mail.smtp] must be a table")
    return sect


def check_configured(ws, name: str, tree: str | None, toml: dict) -> None:
    """Refuse before applying when a tree to be mailed has no way to send."""
    from kpatch_tool import mailsend, trees
    from kpatch_tool.errors import UsageError
    from kpatch_tool.series import load_series

    series = load_series(ws, name)
    for t, st in series.trees.items():
        if (tree and t != tree) or not st.patches:
            continue
        repo = trees.repo_path(ws, t)
        where = repo if repo.is_dir() else ws.root
        if not mailsend.settings(where, toml).configured:
            raise UsageError(f"no SMTP server configured for tree '{t}' (git config in {where}, "
                             f"kpt.toml [mail.smtp]); nothing sent: {mailsend.SMTP_HINT}")
