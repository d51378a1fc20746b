"""The pure parts of the kernel VM: parsing tool output, the initramfs, the console protocol."""

from __future__ import annotations

import gzip
import json
import lzma
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from lvsctl.cli import cli
from lvsctl.testbed import vm

APT_CACHE = """\
linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
"""

MODS = "/c/6.1.0-56-amd64/root/lib/modules/6.1.0-56-amd64"
# modprobe ends each insmod line with a space (where module options would go).
SHOW_DEPENDS = "".join(f"{line} \n" for line in [
    f"insmod {MODS}/kernel/drivers/virtio/virtio_ring.ko",
    f"insmod {MODS}/kernel/drivers/virtio/virtio.ko",
    f"insmod {MODS}/kernel/drivers/virtio/virtio_pci.ko",
    f"insmod {MODS}/kernel/net/9p/9pnet.ko",
    f"insmod {MODS}/kernel/fs/9p/9p.ko",
    f"insmod {MODS}/kernel/drivers/virtio/virtio_ring.ko",
    f"insmod {MODS}/kernel/drivers/virtio/virtio.ko",
    f"insmod {MODS}/kernel/net/9p/9pnet.ko",
    f"insmod {MODS}/kernel/net/9p/9pnet_virtio.ko",
    "builtin unix",
    f"insmod {MODS}/kernel/net/ipv4/ipip.ko option=1",
])


def test_kernel_release_is_read_from_the_meta_package() -> None:
    assert vm.parse_meta_depends(APT_CACHE) == "6.1.0-56-amd64"


def test_no_kernel_dependency_says_to_update_the_lists() -> None:
    with pytest.raises(vm.KernelDownloadError, match="apt-get update"):
        vm.parse_meta_depends("linux-image-amd64\n")


def test_module_order_keeps_first_place_and_skips_builtins() -> None:
    assert vm.parse_show_depends(SHOW_DEPENDS, MODS) == [
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/net/9p/9pnet.ko",
        "kernel/fs/9p/9p.ko",
        "kernel/net/9p/9pnet_virtio.ko",
        "kernel/net/ipv4/ipip.ko",
    ]


def test_module_outside_the_tree_is_refused() -> None:
    with pytest.raises(vm.KernelDownloadError, match="outside"):
        vm.parse_show_depends("insmod /lib/modules/other/x.ko\n", MODS)


def test_schedulers_are_every_ip_vs_module_but_helpers(tmp_path: Path) -> None:
    ipvs = tmp_path / "kernel" / "net" / "netfilter" / "ipvs"
    ipvs.mkdir(parents=True)
    for name in ("ip_vs", "ip_vs_rr", "ip_vs_mh", "ip_vs_ftp", "ip_vs_pe_sip", "ip_vs_wrr"):
        (ipvs / f"{name}.ko").write_bytes(b"")
    assert vm.scheduler_modules(tmp_path) == ["ip_vs_mh", "ip_vs_rr", "ip_vs_wrr"]


ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 57 + b"kernel text" * 100


@pytest.mark.parametrize("compress", [
    lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    gzip.compress,
], ids=["xz", "gzip"])
def test_vmlinux_is_found_inside_a_bzimage(compress) -> None:  # type: ignore[no-untyped-def]
    # A false magic before the real payload, and trailing bytes after it, as in a real bzImage.
    decoys = b"MZ setup \xfd7zXZ\x00 not a stream \x1f\x8b\x08 nor this "
    bzimage = decoys + compress(ELF) + b"\0" * 64
    assert vm.find_vmlinux(bzimage) == ELF


def test_no_vmlinux_in_plain_bytes() -> None:
    assert vm.find_vmlinux(b"MZ" + lzma.compress(b"not an elf") + b"tail") is None


def test_static_elf_detection() -> None:
    assert vm.is_static_elf(vm.BUSYBOX.read_bytes())
    assert not vm.is_static_elf(Path("/bin/ls").read_bytes())
    assert not vm.is_static_elf(b"#!/bin/sh\n")


def test_cpio_round_trip_and_busybox_reads_it(tmp_path: Path) -> None:
    entries = [
        vm.CpioEntry("bin", stat.S_IFDIR | 0o755),
        vm.CpioEntry("bin/hello", stat.S_IFREG | 0o755, b"odd length"),
        vm.CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        vm.CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
    ]
    data = vm.cpio_newc(entries)
    assert vm.parse_cpio_newc(data) == {e.name: e for e in entries}
    listed = subprocess.run([str(vm.BUSYBOX), "cpio", "-t"], input=data, capture_output=True,
                            check=True).stdout.decode().split()
    assert listed == ["bin", "bin/hello", "bin/sh", "dev/console"]


def test_initramfs_holds_busybox_init_and_the_modules_in_order(tmp_path: Path) -> None:
    version = "6.1.0-99-amd64"
    mods = tmp_path / "lib" / "modules" / version
    order = ["kernel/drivers/virtio/virtio.ko", "kernel/fs/9p/9p.ko"]
    for rel in order:
        (mods / rel).parent.mkdir(parents=True, exist_ok=True)
        (mods / rel).write_bytes(f"module {rel}".encode())
    archive = vm.parse_cpio_newc(
        vm.build_initramfs(tmp_path, version, order, vm.BUSYBOX.read_bytes()))
    assert archive["init"].data.decode() == vm.init_script(version)
    assert archive["init"].mode & 0o111
    assert archive["modules.order"].data.decode().split() == order
    for rel in order:
        assert archive[f"lib/modules/{version}/{rel}"].data == f"module {rel}".encode()
    assert stat.S_ISCHR(archive["dev/console"].mode) and archive["dev/console"].rdev == (5, 1)
    assert archive["bin/sh"].data == b"busybox" and stat.S_ISLNK(archive["bin/sh"].mode)
    assert archive["bin/busybox"].data == vm.BUSYBOX.read_bytes()
    # The kernel's module autoloader runs the host's modprobe inside the overlay.
    helper = archive["bin/modprobe-in-guest"]
    assert helper.mode & 0o111 and b"chroot /newroot /sbin/modprobe" in helper.data
    assert "echo /bin/modprobe-in-guest > /proc/sys/kernel/modprobe" in vm.init_script(version)


def test_initramfs_refuses_a_dynamic_busybox(tmp_path: Path) -> None:
    with pytest.raises(vm.NoQemuError, match="busybox-static"):
        vm.build_initramfs(tmp_path, "v", [], Path("/bin/ls").read_bytes())


def test_init_mounts_the_host_root_read_only_and_runs_stage2_with_a_clean_env() -> None:
    init = vm.init_script("6.1.0-56-amd64")
    assert f"ro,cache=loose,msize=262144 {vm.ROOT_TAG} /lower" in init
    assert "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work" in init
    assert f"chroot /newroot /usr/bin/env -i /bin/sh {vm.CTL_GUEST}/stage2.sh" in init
    assert 'insmod "/lib/modules/6.1.0-56-amd64/$mod"' in init
    # The argv reaches the command through xargs -0, never through a shell's parsing.
    assert f'xargs -0 -x -a "$ctl/argv" sh -c \'"$@" < /dev/null; echo $? > {vm.CTL_GUEST}/rc\'' \
        in vm.STAGE2


def test_argv_is_nul_separated_and_checked() -> None:
    assert vm.encode_argv(["printf", "%s", "a b", "$HOME"]) == b"printf\0%s\0a b\0$HOME\0"
    with pytest.raises(vm.VmError, match="no command"):
        vm.encode_argv([])
    with pytest.raises(vm.VmError, match="NUL"):
        vm.encode_argv(["a\0b"])
    with pytest.raises(vm.VmError, match="bytes"):
        vm.encode_argv(["x" * vm.MAX_ARGV_BYTES])


def test_guest_env_puts_the_venv_first_and_passes_only_known_names() -> None:
    env = vm.guest_env({"EXTRA": "1"}, host_env={"CI": "true", "SECRET_TOKEN": "x"},
                       venv_bin="/r/.venv/bin")
    assert env["PATH"].startswith("/r/.venv/bin:")
    assert env["VIRTUAL_ENV"] == "/r/.venv"
    assert env["CI"] == "true" and env["EXTRA"] == "1"
    assert "SECRET_TOKEN" not in env
    with pytest.raises(vm.VmError, match="newline"):
        vm.guest_env({"BAD": "a\nb"}, host_env={})


def _split(chunks: list[bytes]) -> tuple[vm.ConsoleSplitter, bytes]:
    splitter = vm.ConsoleSplitter()
    out = b"".join(splitter.feed(c) for c in chunks)
    return splitter, out


def test_console_boot_log_output_and_exit_code() -> None:
    stream = b"[ 1.0] boot noise\n" + vm.START_MARK + b"line 1\nno newline" + vm.END_MARK + b"7\n"
    splitter, out = _split([stream])
    assert out == b"line 1\nno newline"
    assert splitter.exit_code == 7 and splitter.ended
    assert bytes(splitter.boot_log) == b"[ 1.0] boot noise\n"


def test_console_markers_split_across_chunks() -> None:
    stream = b"noise" + vm.START_MARK + b"out\x1bput" + vm.END_MARK + b"123\nafter"
    splitter, out = _split([stream[i:i + 3] for i in range(0, len(stream), 3)])
    assert out == b"out\x1bput"
    assert splitter.exit_code == 123


def test_console_output_is_released_before_the_end() -> None:
    splitter = vm.ConsoleSplitter()
    assert splitter.feed(vm.START_MARK + b"progress...") == b"progress..."
    # A possible start of the end marker is held back until it is decided.
    assert splitter.feed(b"x" + vm.END_MARK[:4]) == b"x"
    assert splitter.feed(b"more") == vm.END_MARK[:4] + b"more"
    assert splitter.exit_code is None


def test_cache_dir_reads_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.delenv("LVSCTL_VM_DIR", raising=False)
    assert vm.cache_dir() == vm.repo_root() / "var" / "vm"
    assert (vm.repo_root() / "pyproject.toml").is_file()  # the checkout, where .gitignore has /var/
    monkeypatch.setenv("LVSCTL_VM_DIR", str(tmp_path))
    assert vm.cache_dir() == tmp_path
    assert vm.cache_dir(tmp_path / "x") == tmp_path / "x"


def test_qemu_argv_uses_tcg_and_shares_the_root_read_only(tmp_path: Path) -> None:
    kernel = vm.Kernel("6.1.0-56-amd64", tmp_path, cached=True)
    argv = vm.qemu_argv(kernel, tmp_path / "ctl",
                        vm.VmOptions(memory="512M", cpus=3, shares=(Path("/r/out"),)))
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "-enable-kvm" not in argv
    assert argv[argv.index("-m") + 1] == "512M" and argv[argv.index("-smp") + 1] == "3"
    fsdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-fsdev"]
    assert fsdevs[0].startswith(f"local,id={vm.ROOT_TAG},path=/,readonly=on,")
    assert fsdevs[2] == "local,id=share0,path=/r/out,security_model=none"
    assert "-netdev" not in argv  # no NIC unless a tap is given


def test_qemu_argv_puts_a_nic_on_the_given_tap(tmp_path: Path) -> None:
    kernel = vm.Kernel("6.1.0-56-amd64", tmp_path, cached=True)
    argv = vm.qemu_argv(kernel, tmp_path / "ctl", vm.VmOptions(tap="lvdtap1"))
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == "tap,id=net0,ifname=lvdtap1,script=no,downscript=no"
    assert "virtio-net-pci,netdev=net0" in argv


def test_kernel_has_ipvs_agrees_with_ipvsadm() -> None:
    ipvsadm = subprocess.run(["ipvsadm", "-Ln"], capture_output=True)
    assert vm.kernel_has_ipvs() == (ipvsadm.returncode == 0)


def test_missing_qemu_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm, "QEMU", "qemu-system-none-such")
    with pytest.raises(vm.NoQemuError, match="qemu-system-none-such is not installed"):
        vm.run(["true"])


@pytest.mark.parametrize(("args", "message"), [
    (["--memory", "lots", "--", "true"], "--memory 'lots': expected a size"),
    (["--memory", "512M\n", "--", "true"], "--memory '512M\\n': expected a size"),
    (["--env", "NOEQUALS", "--", "true"], "--env 'NOEQUALS': expected NAME=VALUE"),
])
def test_cli_rejects_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["vm", "run", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_download_of_an_unknown_kernel_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(vm.KernelDownloadError,
                       match=r"apt-get download linux-image-0\.0\.0-0-none"):
        vm.prepare(tmp_path, version="0.0.0-0-none", progress=lambda line: None)


def test_a_failed_download_falls_back_to_a_cached_kernel(tmp_path: Path) -> None:
    older = tmp_path / "6.1.0-1-amd64"
    older.mkdir()
    (older / f"initramfs-{vm.recipe_id('6.1.0-1-amd64')}.cpio").write_bytes(b"")
    # An initramfs of another recipe (another checkout's /init) is not picked.
    newer = tmp_path / "6.1.0-2-amd64"
    newer.mkdir()
    (newer / "initramfs-000000000000.cpio").write_bytes(b"")
    lines: list[str] = []
    kernel = vm.prepare(tmp_path, version="0.0.0-0-none", progress=lines.append)
    assert kernel.version == "6.1.0-1-amd64" and kernel.cached
    assert "using the cached kernel 6.1.0-1-amd64" in lines[-1]
    assert not (tmp_path / "0.0.0-0-none").exists()


def test_status_lists_cached_kernels_as_json(tmp_path: Path) -> None:
    boot = tmp_path / "6.1.0-1-amd64" / "root" / "boot"
    boot.mkdir(parents=True)
    (boot / "vmlinuz-6.1.0-1-amd64").write_bytes(b"x" * (2 << 20))
    result = CliRunner().invoke(cli, ["vm", "status", "--dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["cache"] == str(tmp_path)
    folder = str(tmp_path / "6.1.0-1-amd64")
    assert info["kernels"] == [
        {"version": "6.1.0-1-amd64", "folder": folder, "ready": False, "mib": 2}]
