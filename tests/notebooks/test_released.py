"""The released (student) notebooks in assignments/: blank, every graded cell fails; nothing leaks.

Each release is executed as a student receives it, in fast mode. Strict xfail semantics per cell: a
graded test cell that passes on the blank release would give points for nothing, so it fails this
test; a cell that is not graded (setup, the empty solution stubs, training, plots) must run without
error, so that "Run all" works before any work is done. The release must also hold none of the
solution code or hidden tests of its source notebook in solutions/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.timeout(900)  # executing a release takes a kernel start and a few seconds per cell

REPO = Path(__file__).resolve().parents[2]
RELEASES = sorted(REPO.glob("assignments/*/*.ipynb"))
SOURCES = sorted(REPO.glob("solutions/a[0-9]*/*.ipynb"))
CELL_TIMEOUT = 300
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "BEGIN MARK SCHEME")
BLOCK = re.compile(r"^[ \t]*### BEGIN (SOLUTION|HIDDEN TESTS)[^\n]*\n(.*?)^[ \t]*### END \1[^\n]*$", re.M | re.S)


def kernel_env(root: Path) -> dict[str, str]:
    """The environment of a test kernel: fast mode, one CPU thread, Jupyter state under ``root``."""
    env = dict(os.environ)
    env.update(
        AELAB_FAST="1",
        OMP_NUM_THREADS="1",  # a busy CI machine makes multi-threaded small matmuls crawl
        JUPYTER_CONFIG_DIR=str(root / "config"),
        JUPYTER_DATA_DIR=str(root / "data"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        IPYTHONDIR=str(root / "ipython"),
        MPLCONFIGDIR=str(root / "matplotlib"),
        JUPYTER_PLATFORM_DIRS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    return env


def grade_id(cell: nbformat.NotebookNode) -> str:
    """The nbgrader id of a cell, or its index-free placeholder for cells without nbgrader metadata."""
    return cell.metadata.get("nbgrader", {}).get("grade_id", "<no grade_id>")


def is_graded(cell: nbformat.NotebookNode) -> bool:
    """Whether nbgrader gives points for this cell (an autograder test cell)."""
    return cell.cell_type == "code" and bool(cell.metadata.get("nbgrader", {}).get("grade"))


@pytest.fixture(scope="module", params=RELEASES, ids=lambda p: p.parent.name)
def executed(request, tmp_path_factory) -> nbformat.NotebookNode:
    """A released notebook executed blank, top to bottom, errors allowed (as nbgrader runs it)."""
    path: Path = request.param
    nb = nbformat.read(path, as_version=4)
    root = tmp_path_factory.mktemp(f"kernel-{path.stem}")
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        allow_errors=True,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=kernel_env(root))
    return nb


def error_of(cell: nbformat.NotebookNode) -> str | None:
    """'Name: value' of the first error output of a cell, or None if it ran cleanly."""
    for out in cell.get("outputs", []):
        if out.output_type == "error":
            return f"{out.ename}: {out.evalue}"
    return None


def test_every_graded_cell_fails_on_the_blank_release(executed):
    passing = [
        f"{grade_id(c)} ({c.metadata['nbgrader'].get('points', 0)} points)"
        for c in executed.cells
        if is_graded(c) and error_of(c) is None
    ]
    assert not passing, (
        "graded cells that pass on the blank release give points for nothing; make their visible part call "
        f"the student's code: {', '.join(passing)}"
    )


def test_cells_that_are_not_graded_run_on_the_blank_release(executed):
    failing = [
        f"{grade_id(c)}: {error_of(c)}"
        for c in executed.cells
        if c.cell_type == "code" and not is_graded(c) and error_of(c) is not None
    ]
    assert not failing, f"cells that are not graded must run on the blank release: {failing}"


def test_there_is_a_release_for_every_source():
    released = {p.relative_to(REPO / "assignments") for p in RELEASES}
    sources = {p.relative_to(REPO / "solutions") for p in SOURCES}
    assert sources, "no source notebooks in solutions/"
    assert sources == released, f"assignments/ and solutions/ differ; run `make assignments` (missing: {sorted(map(str, sources - released))}, extra: {sorted(map(str, released - sources))})"


def secret_lines(source: nbformat.NotebookNode) -> set[str]:
    """Lines of solution and hidden-test blocks that appear nowhere else in the source notebook."""
    secret, public = set(), set()
    for cell in source.cells:
        text = cell.source
        for match in BLOCK.finditer(text):
            secret.update(line.strip() for line in match.group(2).splitlines())
        public.update(line.strip() for line in BLOCK.sub("", text).splitlines())
    return {line for line in secret - public if len(line) >= 12}


@pytest.mark.parametrize("source_path", SOURCES, ids=lambda p: p.parent.name)
def test_the_release_holds_no_solution_or_hidden_test(source_path: Path):
    release_path = REPO / "assignments" / source_path.relative_to(REPO / "solutions")
    assert release_path.exists(), f"{release_path} is missing; run `make assignments`"
    text = release_path.read_text()
    release = nbformat.reads(text, as_version=4)
    for marker in MARKERS:
        assert marker not in text, f"{release_path.name} contains {marker!r}: regenerate it with `make assignments`"
    secrets = secret_lines(nbformat.read(source_path, as_version=4))
    assert len(secrets) >= 10, "the source notebook should have solution and hidden-test code to check for"
    release_lines = {line.strip() for cell in release.cells for line in cell.source.splitlines()}
    leaked = sorted(secrets & release_lines)
    assert not leaked, f"{release_path.name} contains solution or hidden-test lines: {leaked[:5]}"
    outputs = [grade_id(c) for c in release.cells if c.get("outputs")]
    assert not outputs, f"{release_path.name} has outputs in cells {outputs}: releases are generated with outputs cleared"
    assert "widgets" not in release.metadata, (
        f"{release_path.name} carries widget state from the executed source: execute the source notebook with "
        "store_widget_state=False (or delete metadata.widgets), then `make assignments`"
    )


# A few solution and hidden-test lines of each assignment, checked verbatim: a second line of defence
# beside the block parsing above. A new assignment adds an entry here.
KNOWN_SECRET_LINES = {
    "a01_vae": (
        "std = torch.exp(0.5 * logvar)",
        "kl = 0.5 * (torch.exp(logvar) + mu**2 - 1.0 - logvar)",
        "log_p = x * logits - F.softplus(logits)",
        "total = -elbo(log_px, kl, beta=self.config.beta).mean()",
        'check_close(mu.grad, torch.tensor([[0.5, -2.0]]), "d kl_normal / d mu"',
    ),
    "a02_disentangling": (
        "log_qz = torch.logsumexp(pairs.sum(-1), dim=1) - log_nm  # (B,)",
        "order = keys.argsort(dim=0).to(z.device)  # (B, d): an independent permutation per column",
        "target = torch.cat([torch.zeros(z.shape[0]), torch.ones(fake.shape[0])]).long().to(logits.device)",
        "return -log_likelihood.mean() + gamma * (kl.mean() - capacity).abs()",
        "always_real = lambda codes: torch.stack([torch.ones(codes.shape[0]), torch.zeros(codes.shape[0])], dim=1)",
    ),
    "a03_metrics": (
        "np.add.at(joint, (a, b), 1.0)",
        "top = np.sort(mi, axis=0)[::-1]  # each factor's column, largest first",
        "d_per_code = 1.0 - normalised_entropy(R, axis=1, base=K)  # (d,)",
        "dims = np.flatnonzero(active)[spread.argmin(axis=1)]  # (n,): the vote of each batch",
        'check_close(pair(dci_scores(np.zeros((3, 2)))), pair([0.0, 0.0]), "dci_scores of an all-zero matrix"',
    ),
    "a04_sequences": (
        "tau = torch.arange(seq_len, dtype=theta.dtype, device=theta.device) / seq_len  # (T,): t / T in [0, 1)",
        "index = (torch.arange(seq_len, device=values.device) // season_length) % n_seasons  # (T,): the season of each step",
        "return (content - content_other).pow(2).sum(dim=-1).mean()",
        "other = pose[(rows + 1) % B, pair_frames[:, 1]]  # h_p^{t2} of the next clip",
        "expected = torch.zeros(2, 3, 4).index_add_(2, (torch.arange(10) // 3) % 4, weights.transpose(1, 2))",
    ),
    "a05_superposition": (
        'recon = torch.relu(torch.einsum("imn,bim->bin", W, hidden) + b)',
        "return (importance * (x - recon) ** 2).sum(dim=-1).mean(dim=0)",
        "overlaps = (unit @ W).pow(2)  # (..., n, n): (W_hat_i . W_j)^2",
        "per_instance = instance_losses(self.inputs(batch), out.recon, self.importance)",
        "W2[1] += 1.0",
    ),
    "a06_sae": (
        "l1 = (acts.abs() * decoder_norms).sum(dim=-1)  # (B,)",
        "acts = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))  # (B, d_sae)",
        "grad_threshold = (grad * -(threshold / eps) * kernel).sum(dim=0)  # (d,): summed over the batch",
        "total = (x - x.mean(dim=0)).pow(2).sum()  # around the mean of each dimension",
        'ref_jumprelu = reference("aelab.functional.sparsity.jumprelu")',
    ),
    "a07_sae_lm": (
        "handle = model.model.layers[layer].register_forward_hook(hook)  # the OUTPUT of block `layer`",
        "gap = zero - clean  # what zero-ablation costs over the clean model",
        "recon = sae(h.reshape(-1, h.shape[-1])).recon.reshape(h.shape).to(h.dtype)",
        "values, rows = flat.topk(k, dim=1)  # over positions, for each latent",
        "order = sorted(range(B * T), key=lambda r: -float(flat[r, j]))[:k]",
    ),
}


def test_every_source_has_known_secret_lines():
    missing = sorted({p.parent.name for p in SOURCES} - set(KNOWN_SECRET_LINES))
    assert not missing, f"add a few solution and hidden-test lines of {missing} to KNOWN_SECRET_LINES in {Path(__file__).name}"


@pytest.mark.parametrize("name", sorted(KNOWN_SECRET_LINES))
def test_the_release_lacks_known_solution_lines(name):
    source = REPO / "solutions" / name / f"{name}.ipynb"
    release = REPO / "assignments" / name / f"{name}.ipynb"
    assert source.exists() and release.exists(), f"{name}: expected {source} and its release {release} (run `make assignments`)"
    source_code = "\n".join(c.source for c in nbformat.read(source, as_version=4).cells)
    code = "\n".join(c.source for c in nbformat.read(release, as_version=4).cells)
    for line in KNOWN_SECRET_LINES[name]:
        assert line in source_code, f"{line!r} is not in {source.name} any more: update KNOWN_SECRET_LINES"
        assert line not in code, f"the {name} release contains solution or hidden-test code: {line!r}"
