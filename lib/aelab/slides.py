"""Export the lectures to reveal.js slides that work offline: ``python -m aelab.slides``.

nbconvert's slides exporter loads reveal.js, MathJax, require.js, jQuery and the widget renderer
from CDNs by default; a deck made that way is blank in a lecture hall without internet. Here every
one of them comes from a pinned registry package (npm's ``reveal.js``, ``requirejs``, ``jquery`` and
``@jupyter-widgets/html-manager``, PyPI's ``jupyter-server-mathjax`` for MathJax 2.7), downloaded
once with npm and pip into ``.cache/slides/`` and checked against its SHA-256; the export copies
the files next to the decks and points the HTML at them by relative paths, so ``slides/`` can be
copied to a USB stick and opened from disk::

    python -m aelab.slides                    # every lectures/NN_*.ipynb -> slides/NN_*.slides.html
    python -m aelab.slides 02 04 --out /tmp/s # some lectures, elsewhere

Cells carry RISE slide metadata (``slideshow.slide_type``); JupyterLab shows the same slides live
with jupyterlab-rise.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from aelab.data._common import sha256_file

TEMPLATE_DIR = Path(__file__).parent / "slides_template"
TEMPLATE = "aelab_reveal"
ASSET_DIR = "assets"
"""Folder of the offline files, next to the exported decks."""


@dataclass(frozen=True)
class Asset:
    """One pinned registry package whose files the decks load."""

    name: str
    """Folder under ``assets/`` (a file's parent folder for single files)."""
    registry: str
    """``"npm"`` or ``"pypi"``."""
    package: str
    version: str
    sha256: str
    """Of the downloaded archive (npm tarball or wheel)."""
    members: tuple[str, ...]
    """Paths inside the archive to keep: a folder keeps everything under it."""
    strip: str
    """Prefix removed from the kept paths (``package/`` for npm tarballs)."""
    skip: tuple[str, ...] = (".map",)
    """File name endings left out (source maps)."""

    @property
    def archive(self) -> str:
        if self.registry == "npm":
            return f"{self.package.lstrip('@').replace('/', '-')}-{self.version}.tgz"
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


ASSETS = (
    Asset("reveal.js", "npm", "reveal.js", "4.6.1",
          "4f4121ef2b8e7e9398bdecd7b3b6ce5e0ee3a2f5af221708eb6c4ce03bcae6be",
          ("package/dist/reveal.js", "package/dist/reveal.css", "package/dist/reset.css", "package/dist/theme/",
           "package/plugin/notes/", "package/LICENSE"), "package/"),
    Asset("requirejs", "npm", "requirejs", "2.3.7",
          "31f3330c978fb28684622fe71165dc946432cf0210b2ea8a1ca0233e70f2737d",
          ("package/require.js",), "package/"),
    Asset("jquery", "npm", "jquery", "3.7.1",
          "68a9f787516da47c680e09c187bcbac4536b6f85d90eb882844e12919e583f53",
          ("package/dist/jquery.min.js", "package/LICENSE.txt"), "package/"),
    Asset("html-manager", "npm", "@jupyter-widgets/html-manager", "1.0.15",
          "2b9d65cb7913e1c7d671757a10008b32c9c2448d4429513371e55c07d6107638",
          ("package/dist/",), "package/dist/", skip=(".map", "/embed.js", "/libembed-amd.js")),
    Asset("mathjax", "pypi", "jupyter-server-mathjax", "0.2.6",
          "416389dde2010df46d5fbbb7adb087a5607111070af65a1445391040f2babb5e",
          ("jupyter_server_mathjax/static/",), "jupyter_server_mathjax/static/"),
)


def download(asset: Asset, cache: Path) -> Path:
    """The asset's archive in ``cache``, fetched with npm or pip if missing; raises if its SHA-256 differs from the pin."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / asset.archive
    if not path.exists():
        spec = f"{asset.package}@{asset.version}" if asset.registry == "npm" else f"{asset.package}=={asset.version}"
        if asset.registry == "npm":
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError(f"{spec} comes from the npm registry and npm is not installed: install Node.js "
                                   "and npm (Debian: apt-get install npm), then run `make slides` again")
            cmd = [npm, "pack", spec, "--pack-destination", str(cache), "--silent"]
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   "--disable-pip-version-check", "-d", str(cache), spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            raise RuntimeError(f"could not download {spec} ({' '.join(cmd[:3])} ...): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    got = sha256_file(path)
    if got != asset.sha256:
        path.unlink()
        raise RuntimeError(f"{path.name} has SHA-256 {got}, not the pinned {asset.sha256}: "
                           "the download was corrupt or the registry's file changed; run `make slides` again")
    return path


def unpack(asset: Asset, archive: Path, dest: Path) -> None:
    """Extract the asset's kept members into ``dest/<asset.name>/`` (paths relative to ``asset.strip``)."""
    target = dest / asset.name
    if target.exists():
        shutil.rmtree(target)

    def keep(member: str) -> bool:
        return any(member == m or (m.endswith("/") and member.startswith(m)) for m in asset.members) and not member.endswith(asset.skip)

    if archive.suffix == ".tgz":
        with tarfile.open(archive) as tar:
            for info in tar.getmembers():
                if info.isfile() and keep(info.name):
                    out = target / info.name.removeprefix(asset.strip)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tar.extractfile(info).read())
    else:
        with zipfile.ZipFile(archive) as whl:
            for name in whl.namelist():
                if not name.endswith("/") and keep(name):
                    out = target / name.removeprefix(asset.strip)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(whl.read(name))


def prepare_assets(cache: Path) -> Path:
    """Download (once) and unpack every asset; return the folder holding ``reveal.js/``, ``mathjax/``, ..."""
    dest = cache / ASSET_DIR
    stamp = dest / ".pins"
    pins = "\n".join(f"{a.package}=={a.version} {a.sha256}" for a in ASSETS)
    if stamp.exists() and stamp.read_text() == pins:
        return dest
    for asset in ASSETS:
        unpack(asset, download(asset, cache), dest)
    stamp.write_text(pins)
    return dest


def exporter():
    """nbconvert's SlidesExporter with every URL pointing into ``assets/`` and the course's template."""
    from nbconvert import SlidesExporter
    from traitlets.config import Config

    c = Config()
    c.SlidesExporter.reveal_url_prefix = f"{ASSET_DIR}/reveal.js"
    c.SlidesExporter.reveal_scroll = True  # long code cells scroll instead of running off the slide
    c.SlidesExporter.mathjax_url = f"{ASSET_DIR}/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
    c.SlidesExporter.require_js_url = f"{ASSET_DIR}/requirejs/require.js"
    c.SlidesExporter.jquery_url = f"{ASSET_DIR}/jquery/dist/jquery.min.js"
    c.SlidesExporter.widget_renderer_url = f"{ASSET_DIR}/html-manager/embed-amd.js"
    c.SlidesExporter.extra_template_basedirs = [str(TEMPLATE_DIR)]
    c.SlidesExporter.template_name = TEMPLATE
    return SlidesExporter(config=c)


def export(lectures: list[Path], out: Path, cache: Path) -> list[Path]:
    """Write ``out/<lecture>.slides.html`` for each lecture and the offline files to ``out/assets/``."""
    import nbformat

    assets = prepare_assets(cache)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(assets, out / ASSET_DIR, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".pins"))
    slides = exporter()
    written = []
    for path in lectures:
        body, _ = slides.from_notebook_node(nbformat.read(path, as_version=4), resources={"metadata": {"name": path.stem}})
        target = out / f"{path.stem}.slides.html"
        target.write_text(body, encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    from aelab.lectures import find

    parser = argparse.ArgumentParser(prog="python -m aelab.slides", description=__doc__.splitlines()[0])
    parser.add_argument("lectures", nargs="*", help="name prefixes, e.g. 02 04 (default: all)")
    parser.add_argument("--root", default=".", help="the repository root (default: the current folder)")
    parser.add_argument("--out", default=None, help="output folder (default: ROOT/slides)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    out = Path(args.out).resolve() if args.out else root / "slides"
    for target in export(find(root, args.lectures), out, root / ".cache" / "slides"):
        print(f"{target} ({target.stat().st_size / 1e6:.1f} MB)")
    print(f"open {out}/<lecture>.slides.html in a browser (offline: reveal.js and MathJax are in {out / ASSET_DIR})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
