"""`kpt image initramfs`, `kpt boot` and `kpt results`: images, boots and their results."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click


from kpatch_tool.ui import console, say

@click.group()
def image():
    """Boot images: the initramfs that runs the checks and prints KTAP."""

@image.command("initramfs")
@click.option("--kernel-build", "kernel_build", required=True, type=click.Path(file_okay=False, exists=True),
              help="The kernel's O= build folder (its kernel.release is what the guest must run).")
@click.option("--modules", "modules_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="A `make modules_install INSTALL_MOD_PATH=` staging folder; its modules go in and must load.")
@click.option("--series", "series", multiple=True, help="Add this series' [[smoke]] checks (repeatable).")
@click.option("--mode", type=click.Choice(["guest", "xen"]), default="guest", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Copy the image here (it stays cached under the cache's images/ anyway).")
@click.pass_obj
def image_initramfs(obj, kernel_build, modules_dir, series, mode, output):
    """Build (or reuse) the initramfs: busybox, modules, checks, and a KTAP-printing /init.

    \b
    Example: kpt image initramfs --kernel-build ~/.cache/kpt/builds/linux-guest --series netback-per-vif
    """
    from kpatch_tool import image as img

    ws = obj.ws
    release = img.kernel_release(Path(kernel_build))
    smoke = img.load_smoke(ws, list(series))
    path = img.build_initramfs(ws, kernel_release=release, modules_dir=Path(modules_dir) if modules_dir else None,
                               smoke=smoke, mode=mode)
    if output:
        shutil.copyfile(path, output)
        path = Path(output)
    say(f"initramfs for {release} ({mode}, {len(smoke)} series checks)")
    click.echo(path)

@click.command("boot")
@click.option("--mode", type=click.Choice(["guest", "xen"]), default="guest", show_default=True,
              help="guest: plain QEMU; xen: the kernel as PV dom0 under Xen in QEMU.")
@click.option("--kernel", required=True, type=click.Path(dir_okay=False, exists=True), help="bzImage to boot.")
@click.option("--initrd", type=click.Path(dir_okay=False, exists=True), default=None,
              help="initramfs (from `kpt image initramfs`); default: the base checks for the kernel's release.")
@click.option("--xen", "xen", type=click.Path(dir_okay=False), default=None,
              help="Xen hypervisor (ELF or .gz); default: Debian's /boot/xen-4.*-amd64.gz.")
@click.option("--timeout", type=float, default=None, help="Seconds before the boot counts as hung "
              "(default 120 guest, 300 xen).")
@click.option("--append", default="", help="Extra kernel command line.")
@click.option("--memory", type=int, default=None, help="Guest RAM in MiB (default 512 guest, 1024 xen).")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Run folder for console.log, results.json, results.xml (default: out/boot-<time>).")
@click.option("--verbose", "-v", is_flag=True, help="Stream the console while it boots.")
@click.pass_obj
def boot_cmd(obj, mode, kernel, initrd, xen, timeout, append, memory, out, verbose):
    """Boot a kernel under QEMU (or as Xen dom0), run the checks, judge the console.

    Exit 0 when every check passed, 1 when a check failed, 6 on panic, oops,
    timeout or missing KTAP (with the last console lines).

    \b
    Example: kpt boot --kernel build/arch/x86/boot/bzImage --initrd $(kpt image initramfs --kernel-build build)
    Example: kpt boot --mode xen --kernel bzImage-dom0 --initrd dom0.cpio.gz -v
    """
    from kpatch_tool import boot as bootmod
    from kpatch_tool import image as img
    from kpatch_tool import qemu
    from kpatch_tool import results as res

    ws = obj.ws
    if initrd is None:
        release = qemu.bzimage_release(Path(kernel))
        if not release:
            raise click.UsageError("cannot read the kernel's release from its header; pass --initrd")
        initrd = img.build_initramfs(ws, kernel_release=release, modules_dir=None, smoke=[], mode=mode)
        say(f"base initramfs for {release}: {initrd}")
    run_dir = Path(out) if out else ws.out_dir / time.strftime(f"boot-{mode}-%Y%m%d-%H%M%S")
    on_line = (lambda line: click.echo(line, err=True)) if verbose else None
    if not qemu.kvm()[0]:
        say(f"TCG: {qemu.kvm()[1]}")
    result = bootmod.boot(ws, mode=mode, kernel=Path(kernel), initrd=Path(initrd), run_dir=run_dir,
                          timeout=timeout or (120 if mode == "guest" else 300), xen=Path(xen) if xen else None,
                          on_line=on_line, append=append, memory=memory)
    res.print_table(res.load_json(run_dir / res.RESULTS_JSON), console)
    result.raise_for_verdict()

@click.command("results")
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print results.json as is.")
@click.pass_obj
def results_cmd(obj, run_dir, as_json):
    """Print the results of a boot: one row per test, then the verdict.

    \b
    Example: kpt results out/boot-guest-20250101-120000
    """
    from kpatch_tool import results as res

    path = res.find(Path(run_dir))
    rr = res.load_json(path)  # a broken file is named, also with --json
    if as_json:
        from kpatch_tool.userfile import read_text

        click.echo(read_text(path, "results file"), nl=False)
        return
    res.print_table(rr, console)


COMMANDS = [image, boot_cmd, results_cmd]
