"""The sandbox's reverse-proxy image (deploy_runs/sandbox/engine.py ensure_proxy_image) and
Debian's nginx binary taken from its .deb without installing it (packages.nginx_binary)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from deploy_runs.sandbox import engine, packages
from deploy_runs.sandbox.layout import ENV_DIR
from deploy_runs.sandbox.processes import SandboxError

LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd4a3f2000)
\tlibcrypt.so.1 => /lib/x86_64-linux-gnu/libcrypt.so.1 (0x00007f0b05b7e000)
\tlibssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x00007f0b05a3b000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0b0521e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0b05d21000)
"""


def _completed(argv, stdout="", returncode=0):
    return subprocess.CompletedProcess(list(argv), returncode, stdout, "")


def test_shared_libraries_are_the_paths_ldd_gives(monkeypatch):
    monkeypatch.setattr(engine, "run", lambda argv, **kw: _completed(argv, LDD_OUTPUT))
    assert engine.shared_libraries(Path("/x/nginx")) == [
        Path("/lib/x86_64-linux-gnu/libcrypt.so.1"),
        Path("/lib/x86_64-linux-gnu/libssl.so.3"),
        Path("/lib/x86_64-linux-gnu/libc.so.6"),
        Path("/lib64/ld-linux-x86-64.so.2"),
    ]


def test_a_missing_library_is_an_error(monkeypatch):
    out = "\tlibpcre2-8.so.0 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n"
    monkeypatch.setattr(engine, "run", lambda argv, **kw: _completed(argv, out))
    with pytest.raises(SandboxError, match=r"libpcre2-8\.so\.0"):
        engine.shared_libraries(Path("/x/nginx"))


def test_proxy_context(tmp_path, monkeypatch):
    libs = tmp_path / "host"
    (libs / "lib").mkdir(parents=True)
    (libs / "lib" / "libc.so.6.real").write_bytes(b"libc")
    (libs / "lib" / "libc.so.6").symlink_to("libc.so.6.real")
    binary = tmp_path / "nginx"
    binary.write_bytes(b"nginx")
    monkeypatch.setattr(engine, "shared_libraries", lambda b: [libs / "lib" / "libc.so.6"])
    ctx = tmp_path / "ctx"
    ctx.mkdir()

    engine.proxy_context(ctx, binary)

    root = ctx / "rootfs"
    assert (root / "usr/sbin/nginx").read_bytes() == b"nginx"
    lib = root / (libs / "lib" / "libc.so.6").relative_to("/")
    assert not lib.is_symlink() and lib.read_bytes() == b"libc"  # the file, at ldd's path
    for d in ("etc/nginx/conf.d", "var/lib/nginx", "var/log/nginx", "run", "usr/share/nginx"):
        assert (root / d).is_dir(), d
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert "nobody:x:65534:65534:" in (root / "etc/passwd").read_text()
    assert "nogroup:x:65534:" in (root / "etc/group").read_text()
    conf = (root / "etc/nginx/nginx.conf").read_text()
    for line in ("user nobody nogroup;", "pid /run/nginx.pid;", "access_log off;",
                 "include /etc/nginx/conf.d/*.conf;", "include /etc/nginx/mime.types;"):
        assert line in conf
    assert (root / "etc/nginx/mime.types").is_file()
    dockerfile = (ctx / "Dockerfile").read_text()
    assert dockerfile.startswith("FROM scratch\n")
    assert "RUN" not in dockerfile  # scratch has no shell
    assert 'CMD ["nginx", "-g", "daemon off;"]' in dockerfile
    assert 'LABEL org.deploy-runs.sandbox-proxy="1"' in dockerfile


def test_ensure_proxy_image_builds_only_if_missing(monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "has_image", lambda host, ref: True)
    monkeypatch.setattr(engine, "run", lambda argv, **kw: calls.append(argv))
    assert engine.ensure_proxy_image("unix:///x.sock") is False
    assert calls == []


# --- packages.nginx_binary --------------------------------------------------------------------


@pytest.fixture
def sandbox_dir(tmp_path, monkeypatch):
    d = tmp_path / "sandbox"
    monkeypatch.setenv(ENV_DIR, str(d))
    monkeypatch.setattr(packages, "NGINX_BINARY", tmp_path / "not-installed" / "nginx")
    monkeypatch.setattr(packages, "APT_ARCHIVES", tmp_path / "archives")
    (tmp_path / "archives").mkdir()
    return d


def _build_deb(out: Path, version: str, arch: str, content: bytes) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    tree = out.parent / f".tree-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/sbin").mkdir(parents=True)
    (tree / "usr/sbin/nginx").write_bytes(content)
    (tree / "DEBIAN/control").write_text(
        f"Package: nginx\nVersion: {version}\nArchitecture: {arch}\n"
        "Maintainer: test <test@example.invalid>\nDescription: test\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)],
                   check=True, capture_output=True)


def _arch() -> str:
    if shutil.which("dpkg") is None:
        pytest.skip("dpkg is not installed")
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_installed_nginx_is_used(tmp_path, monkeypatch):
    installed = tmp_path / "nginx"
    installed.write_bytes(b"nginx")
    monkeypatch.setattr(packages, "NGINX_BINARY", installed)
    assert packages.nginx_binary() == installed


def test_nginx_from_apt_cache_extracted_once(sandbox_dir, monkeypatch):
    arch = _arch()
    archives = packages.APT_ARCHIVES
    _build_deb(archives / f"nginx_1.22.1-9_{arch}.deb", "1.22.1-9", arch, b"old")
    _build_deb(archives / f"nginx_1.22.1-10_{arch}.deb", "1.22.1-10", arch, b"new")

    binary = packages.nginx_binary()

    assert binary == sandbox_dir / "nginx" / "root" / "usr/sbin/nginx"
    assert binary.read_bytes() == b"new"  # the newest version (1.22.1-10 > 1.22.1-9)
    real_run = packages.run
    calls = []
    monkeypatch.setattr(packages, "run", lambda argv, **kw: calls.append(argv) or real_run(argv, **kw))
    assert packages.nginx_binary() == binary
    assert calls == []  # cached: no dpkg-deb again


def test_nginx_downloaded_when_not_in_apt_cache(sandbox_dir, monkeypatch):
    arch = _arch()
    real_run = packages.run
    calls = []

    def fake_run(argv, **kw):
        calls.append(argv)
        if argv[:2] == ["apt-get", "download"]:
            _build_deb(kw["cwd"] / f"nginx_1.22.1-9_{arch}.deb", "1.22.1-9", arch, b"downloaded")
            return _completed(argv)
        assert argv[0] != "apt-get", argv
        return real_run(argv, **kw)

    monkeypatch.setattr(packages, "run", fake_run)
    assert packages.nginx_binary().read_bytes() == b"downloaded"
    assert ["apt-get", "download", "nginx"] in calls


def test_deb_without_the_binary_is_an_error(sandbox_dir):
    arch = _arch()
    deb = packages.APT_ARCHIVES / f"nginx_1.0_{arch}.deb"
    _build_deb(deb, "1.0", arch, b"x")
    # a package "nginx" whose files lack /usr/sbin/nginx
    tree = deb.parent / ".tree-1.0"
    (tree / "usr/sbin/nginx").unlink()
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)],
                   check=True, capture_output=True)
    with pytest.raises(SandboxError, match="usr/sbin/nginx"):
        packages.nginx_binary()
    assert not (sandbox_dir / "nginx" / "root").exists()
