"""Make `dvc plots show` render without internet: a page template with vega inside.

    python scripts/offline_plots.py        (make setup runs it)

DVC's interactive plots load vega, vega-lite and vega-embed from a CDN, so offline the page
stays blank. This fetches the very versions DVC's page asks for from the npm registry (the same
registry `npm install` uses), checks each package against the integrity hash npm published,
writes `.dvc/plots/offline.html` with the three scripts inline, and only then names it in this
clone's `.dvc/config.local` (`plots.html_template`), so a clone without it keeps DVC's page.
It first makes `.dvc/config.local` readable by this user only (it may hold a remote's
credentials). If the registry cannot be reached, nothing else changes (plots then need
internet), and it says so.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"
TEMPLATE_SETTING = "plots/offline.html"  # relative to .dvc/, as DVC reads it
REGISTRY = "https://registry.npmjs.org"
# What dvc-render 1.0 loads (dvc_render/vega.py), with npm's published integrity of each tarball.
PACKAGES = (
    (
        "vega",
        "5.20.2",
        "build/vega.min.js",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
    ),
    (
        "vega-lite",
        "5.2.0",
        "build/vega-lite.min.js",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
    ),
    (
        "vega-embed",
        "6.18.2",
        "build/vega-embed.min.js",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
    ),
)


def fetch(name: str, version: str, member: str, integrity: str) -> str:
    """One script from its npm tarball, the tarball checked against npm's sha512 first."""
    import requests

    url = f"{REGISTRY}/{name}/-/{name}-{version}.tgz"
    reply = requests.get(url, timeout=60)
    reply.raise_for_status()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(reply.content).digest()).decode()
    if digest != integrity:
        raise ValueError(f"{url}: integrity {digest} is not npm's {integrity}")
    with tarfile.open(fileobj=io.BytesIO(reply.content), mode="r:gz") as archive:
        script = archive.extractfile(f"package/{member}").read().decode("utf-8")
    # Inline, the only sequence that could end the <script> element early is escaped.
    return script.replace("</script", "<\\/script")


def offline_page() -> str:
    """DVC's own page, with the three scripts inline where it would put CDN links."""
    from dvc_render.html import PAGE_HTML

    scripts = [fetch(*package) for package in PACKAGES]
    inline = "\n".join(f'<script type="text/javascript">{s}</script>' for s in scripts)
    return PAGE_HTML.replace("{scripts}", inline)


def private_local_config() -> None:
    """This clone's `.dvc/config.local`, made (or made again) readable by its owner only: it is
    where DVC puts a remote's `--local` settings, credentials among them, and DVC rewrites an
    existing file in place, keeping its mode (it would create one world-readable)."""
    path = ROOT / ".dvc" / "config.local"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    path.chmod(0o600)


def main() -> int:
    import gzip
    import zlib

    import requests

    private_local_config()
    sys.path.insert(0, str(ROOT))
    from mlpipe.atomic import write_text

    try:
        page = offline_page()
    except (
        requests.RequestException,
        OSError,
        EOFError,
        zlib.error,
        gzip.BadGzipFile,
        tarfile.TarError,
        KeyError,
        AttributeError,
        ValueError,
    ) as exc:
        print(f"warning: vega not fetched ({exc}); dvc plots show will need internet")
        return 0
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    write_text(TEMPLATE, page)
    subprocess.run(
        [sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", TEMPLATE_SETTING],
        cwd=ROOT,
        check=True,
    )
    print(f"{TEMPLATE.relative_to(ROOT)}: dvc plots show now works offline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
