"""The report stage: reports/html/index.html and its PNGs, one self-contained folder.

A page to look at: the evaluation table (our systems, with the ground-truth row on top) and the
published figures beside it, each marked whether it is comparable (it is not when the network
that scores LSE, the landmarks of LMD or the data differ); the training curves of the sync expert
and of each generator variant; sample frames (ground truth | composite | variants); the
sync-check offset histogram; and the memory analysis (mean memory address per phoneme and per
word, the causal test of the readout, address information and store fidelity, computed by evaluate).
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .. import paths
from ..errors import PipelineError
from ..io import ffmpeg
from ..runtime import atomic_folder, write_json_atomic
from ..stages import StageContext

ANCHORS = Path(__file__).with_name("anchors.yaml")
SHOWN = ["psnr", "ssim", "psnr_mouth", "ssim_mouth", "lmd", "sharpness_mouth", "fid", "fid_mouth", "lse_d", "lse_c"]
SHOWN += ["offset_abs"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _table(df: pd.DataFrame, **kw) -> str:
    """An HTML table whose first column is the index (the system), in one header row."""
    return df.reset_index().to_html(index=False, float_format=lambda v: f"{v:.3f}", classes="tbl", **kw)


def curves_png(csv_path: Path, columns: list[list[str]], title: str, out: Path) -> bool:
    if not csv_path.is_file():
        return False
    df = pd.read_csv(csv_path)
    if df.empty:  # a model given, not trained here: no curve
        return False
    plt = _plt()
    ncols = min(2, len(columns))  # at most two panels a row: the page shows the figure at its own size
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(columns) :]:
        ax.set_visible(False)
    for ax, cols in zip(axes.flat, columns):
        for k, c in enumerate(cols):
            if c in df and df[c].notna().any():
                s = df[["step", c]].dropna()
                ax.plot(
                    s.step,
                    s[c],
                    label=c,
                    marker="o" if len(s) < 30 else None,
                    ms=3,
                    linestyle=("-", "--", ":", "-.")[k % 4],
                )  # curves that coincide stay visible
        ax.set_xlabel("step")
        ax.legend(fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def sample_frames_png(video: Path, systems: list[str], out: Path, n: int = 6) -> bool:
    """Frames of a side-by-side evaluation video (one row per sampled frame)."""
    if not video.is_file():
        return False
    frames = ffmpeg.read_frames(video)
    picks = np.linspace(2, len(frames) - 3, n).round().astype(int)
    grid = np.concatenate([frames[i] for i in picks], axis=0)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 * len(systems), 1.6 * n * grid.shape[0] / grid.shape[1] * len(systems) / n))
    ax.imshow(grid)
    w = frames.shape[2] / len(systems)
    ax.set_xticks([w * (k + 0.5) for k in range(len(systems))])
    ax.set_xticklabels(systems, fontsize=8)
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def anchors_html(lse_network: str, dataset: str) -> str:
    if not ANCHORS.is_file():
        return "<p>No published figures on file.</p>"
    entries = yaml.safe_load(ANCHORS.read_text()) or []
    parts = []
    for e in entries:
        reasons = []
        if e.get("dataset", "").lower() != dataset:
            reasons.append(f"their data: {e.get('dataset')}, ours: {dataset}")
        if lse_network != "syncnet_v2":
            reasons.append("our LSE is scored by our own expert, theirs by SyncNet v2")
        reasons.append("their LMD uses dlib's 68 points, ours mediapipe's lip points")
        rows = pd.DataFrame(e["rows"]).set_index("system")
        parts.append(
            f"<h3>{html.escape(e['paper'])}: {html.escape(str(e.get('dataset')))} "
            f"<span class='nc'>not comparable</span></h3><p class='why'>{html.escape('; '.join(reasons))}. "
            f"Source: <a href='{html.escape(e.get('source', ''))}'>{html.escape(str(e.get('table', '')))}</a></p>"
            + _table(rows, na_rep="–")
        )
    return "\n".join(parts)


def run(view: dict, ctx: StageContext) -> dict:
    ds = view["data"]["dataset"]
    eval_dir = paths.eval_dir()
    table_path = eval_dir / "eval_table.csv"
    if not table_path.is_file():
        raise PipelineError(f"{table_path} not found: run evaluate first")
    out = paths.report_dir()
    with atomic_folder(out) as tmp:
        table = pd.read_csv(table_path).set_index("system")
        network = str(table.lse_network.iloc[0])
        variants = list(view["generator"]["variants"])
        sections = []

        shown = table[[c for c in SHOWN if c in table]]
        sections.append(
            (
                "Evaluation on the test split",
                f"<p>LSE-D/LSE-C scored by <b>{html.escape(network)}</b>"
                f"{' (the project’s own sync expert: not the published SyncNet v2, so not comparable with papers)' if network != 'syncnet_v2' else ''}; "
                "LMD on mediapipe face-mesh lip points (40 points, crop pixels); PSNR/SSIM on aligned crops, "
                "whole and mouth region; <i>sharpness_mouth</i> the variance of the Laplacian in the mouth region "
                "(no reference: a blurred mouth scores low, but noise scores high too, so read it against the "
                "ground-truth row). "
                + (
                    "<i>fid</i>, <i>fid_mouth</i>: FID against the ground truth's frames (FID's Inception, pytorch-fid's "
                    "weights file), whole crop and mouth region, over every test frame. "
                    if "fid" in table
                    else "FID is not computed: <code>evaluate.inception</code> names no Inception weights file. "
                )
                + "Lower is better for LMD, FID and LSE-D, higher for PSNR, SSIM and LSE-C. "
                f"{int(table.clips.iloc[0])} test clips.</p>"
                + _table(shown)
                + "<p class='why'>PSNR is capped at 100 dB for identical frames (the ground-truth row).</p>"
                + "<h3>Published figures</h3><p class='why'>Only figures read verbatim from a source are on file "
                "(<code>pipeline/evaluate/anchors.yaml</code>). SyncTalkFace's own table is not: no source we could read "
                "gives its numbers as text, and the file says how to add them from the paper.</p>"
                + anchors_html(network, ds),
            )
        )

        cross_path = eval_dir / "eval_table_cross_audio.csv"
        if cross_path.is_file():
            cross = pd.read_csv(cross_path).set_index("system")
            shown_cross = cross[[c for c in ("sharpness_mouth", "lse_d", "lse_c", "offset_abs", "pairs") if c in cross]]
            sections.append(
                (
                    "Cross-audio: faces driven by other clips' speech",
                    (
                        f"<p>{int(cross.pairs.iloc[0])} pairs (a face clip, another clip's audio; cut to the shorter). No ground "
                        "truth exists for these videos, so only LSE and the mouth's sharpness are measured; <i>ground_truth</i> is the untouched face with the "
                        "foreign audio, i.e. what no lip-sync scores, and <i>composite</i> the reference-mouth copy. This is the "
                        "protocol of Wav2Lip's LRS2 test pairs and the harder test of lip-sync: reconstruction lets a "
                        f"model copy the mouth it sees. LSE by <b>{html.escape(str(cross.lse_network.iloc[0]))}</b>.</p>"
                        + _table(shown_cross)
                    ),
                )
            )

        imgs = []
        if curves_png(
            paths.plot("train_sync_expert"),
            [
                ["train_loss", "val_loss"],
                ["val_acc", "val_acc_voiced", "val_acc_in_sync", "val_acc_off_sync", "val_auc"],
            ],
            "sync expert",
            tmp / "curves_sync_expert.png",
        ):
            imgs.append("curves_sync_expert.png")
        for v in variants:
            if curves_png(
                paths.plot(f"train_generator_{v}"),
                [
                    ["l1", "l1_lip", "val_l1"],
                    ["av_sync", "vv_sync", "val_sync_loss"],
                    ["d_loss", "gan", "d_real", "d_fake"],
                    ["val_psnr", "val_psnr_mouth"],
                ],
                f"generator ({v})",
                tmp / f"curves_generator_{v}.png",
            ):
                imgs.append(f"curves_generator_{v}.png")
        sections.append(("Training curves", "".join(f"<img src='{i}'>" for i in imgs)))

        systems = (
            (eval_dir / "systems.txt").read_text().splitlines()[0].split(": ", 1)[1].split(" | ")
            if (eval_dir / "systems.txt").is_file()
            else list(table.index)
        )
        videos = sorted((eval_dir / "samples").glob("*.mp4"))
        recon = [v for v in videos if not v.name.startswith("cross_")]
        cross_videos = [v for v in videos if v.name.startswith("cross_")]
        sample_html = []
        for k, video in enumerate(recon[:2] + cross_videos[:1]):
            name = f"samples_{k}.png"
            if sample_frames_png(video, systems, tmp / name):
                shutil.copy2(video, tmp / video.name)
                what = "cross-audio: " if video in cross_videos else "reconstruction: "
                sample_html.append(
                    f"<figure><img src='{name}'><figcaption>{what}{html.escape(video.stem)} "
                    f"(<a href='{html.escape(video.name)}'>video with sound</a>)</figcaption></figure>"
                )
        demo = paths.demo_dir() / "demo.mp4"
        if demo.is_file():
            shutil.copy2(demo, tmp / "demo.mp4")
            sample_html.append(
                "<p>Demo (a test face driven by another clip's speech): "
                "<video controls src='demo.mp4' width='320'></video></p>"
            )
            info = paths.demo_dir() / "demo.json"
            d = json.loads(info.read_text()) if info.is_file() else {}
            if "mean_mouth_corr_driving" in d:
                sample_html.append(
                    "<p>Does the mouth follow the driving speech? Correlation of the output's mouth opening "
                    "(face-mesh inner-lip gap / mouth width) with the speech envelope, over "
                    f"{d['pairs']} face/speech pairs of the test split: with the driving speech "
                    f"<b>{_corr(d['mean_mouth_corr_driving'])}</b>, with the face clip's own audio "
                    f"{_corr(d['mean_mouth_corr_original'])} (the input video's mouth against the driving speech: "
                    f"{_corr(d['mean_input_mouth_corr_driving'])}); {d['pairs_following_driving']} of {d['pairs']} pairs "
                    "follow the driving speech more than the original audio.</p>"
                )
        sections.append(("Samples", "".join(sample_html) or "<p>No sample videos.</p>"))

        hist = paths.sync_check_dir(ds) / "offsets_hist.png"
        if hist.is_file():
            shutil.copy2(hist, tmp / "offsets_hist.png")
            sync = json.loads(paths.metrics("sync_check").read_text()) if paths.metrics("sync_check").is_file() else {}
            sections.append(
                (
                    "Sync check",
                    f"<p>{sync.get('excluded', '?')} of {sync.get('clips', '?')} clips excluded "
                    "from generator training.</p><img src='offsets_hist.png'>",
                )
            )

        analysis = {}
        if "memory" in variants:
            analysis = _memory_section(view, tmp, sections)
        page = _page(ds, sections)
        (tmp / "index.html").write_text(page)
    summary = {"sections": len(sections), "images": len(list(out.glob("*.png"))), **analysis}
    write_json_atomic(paths.metrics("report"), summary)
    return summary


def _memory_section(view: dict, tmp: Path, sections: list) -> dict:
    """The evaluate stage's memory analysis (metrics/memory.json, reports/eval/memory/): the
    causal test, the address and store measures and the heatmaps."""
    path = paths.metrics("memory")
    m = json.loads(path.read_text()) if path.is_file() else {}
    if "slots" not in m:
        sections.append(("Audio-Lip Memory", f"<p>No memory analysis in {path}: run evaluate.</p>"))
        return {}
    rows = ""
    for split in ("val", "test"):
        if f"{split}_mouth_l1" not in m:
            continue
        for mode, label in (
            ("", "as is"),
            ("_readout_shuffled", "shuffled across frames"),
            ("_readout_zeroed", "zeroed"),
        ):
            rows += (
                f"<tr><td style='text-align:left'>{split} ({m[f'{split}_clips']} clips)</td>"
                f"<td style='text-align:left'>{label}</td><td>{m[f'{split}_mouth_l1{mode}']:.4f}</td>"
                f"<td>{m[f'{split}_within1{mode}']:.2f}</td><td>{m[f'{split}_abs_offset{mode}']:.2f}</td>"
                f"<td>{m[f'{split}_confidence{mode}']:.3f}</td></tr>"
            )
    body = (
        "<p>The causal test: the memory generator's clips made with the audio-addressed memory readout as "
        "is, shuffled across the frames of a clip, and zeroed. A decoder that draws the mouth from the memory "
        "gets worse when its readout is taken away; one that ignores it does not change.</p>"
        "<table class='tbl'><tr><th>split</th><th>readout</th><th>mouth L1</th><th>within &plusmn;1</th>"
        f"<th>|offset|</th><th>confidence</th></tr>{rows}</table>"
    )
    measures = [
        ("I(address; frame), nats", "audio_address_info_nats", ".3f"),
        ("I(lip address; frame), nats", "lip_address_info_nats", ".3f"),
        ("slots that are a frame's strongest", "slots_used", "d"),
        ("effective slots per frame", "effective_slots", ".1f"),
        ("mean pairwise cosine of the audio queries", "query_cosine", ".3f"),
        ("share of the lip features' variance within clips", "lip_within_clip", ".3f"),
        ("share of the audio queries' variance within clips", "query_within_clip", ".3f"),
        ("I(phoneme; strongest slot), nats (bias-corrected)", "phoneme_info_nats", ".3f"),
        ("store MSE", "store_mse", ".4f"),
        ("MSE of the mean lip feature", "store_mse_mean_predictor", ".4f"),
        ("KL(lip || audio address), own frames", "align_kl", ".3f"),
        ("KL(lip || audio address), shuffled frames", "align_kl_shuffled", ".3f"),
    ]
    body += (
        f"<p>Addresses over the frames of the val and test clips ({m['slots']} slots; ln {m['slots']} = "
        f"{np.log(m['slots']):.2f} nats is the most a frame's address can say):</p><table class='tbl'>"
        "<tr><th>measure</th><th>val</th><th>test</th></tr>"
    )
    for label, key, fmt in measures:
        cells = "".join(
            f"<td>{format(m[k], fmt)}</td>" if isinstance(m.get(k), (int, float)) else "<td>-</td>"
            for k in (key, f"test_{key}")
        )
        body += f"<tr><td style='text-align:left'>{label}</td>{cells}</tr>"
    body += "</table>"
    for key, title in (("phone", "phoneme"), ("word", "word")):
        png = paths.eval_dir() / "memory" / f"memory_{key}.png"
        if png.is_file():
            shutil.copy2(png, tmp / png.name)
            body += f"<img src='{png.name}' alt='mean audio address per {title}'>"
        else:
            body += f"<p>No {title} timing for this dataset.</p>"
    sections.append(("Audio-Lip Memory", body))
    split = "" if "slots_used" in m else "test_"  # a dataset without val clips has the test split's only
    return {
        "memory_slots_used": m.get(f"{split}slots_used"),
        "memory_audio_address_info_nats": m.get(f"{split}audio_address_info_nats"),
        "memory_mouth_l1_shuffled_rise": m.get("val_mouth_l1_shuffled_rise", m.get("test_mouth_l1_shuffled_rise")),
    }


def _page(ds: str, sections: list) -> str:
    toc = "".join(f"<li><a href='#s{k}'>{html.escape(t)}</a></li>" for k, (t, _) in enumerate(sections))
    body = "".join(f"<section id='s{k}'><h2>{html.escape(t)}</h2>{b}</section>" for k, (t, b) in enumerate(sections))
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>SyncTalkFace pipeline: {ds}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}}
h1{{margin-bottom:.2em}} section{{margin:2em 0;border-top:1px solid #ddd}} img{{max-width:100%;margin:.5em 0}}
table.tbl{{border-collapse:collapse;font-size:14px}} .tbl td,.tbl th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
.tbl th{{background:#f3f3f3}} .nc{{background:#fde2c8;color:#8a4500;font-size:12px;padding:2px 6px;border-radius:3px}}
.why{{font-size:13px;color:#555}} figure{{margin:0}} figure img{{max-width:560px}}</style></head><body>
<h1>SyncTalkFace pipeline: {html.escape(ds)}</h1><p>Generated by <code>python -m pipeline report</code>.</p>
<ul>{toc}</ul>{body}</body></html>"""


def _corr(value) -> str:
    """A correlation for the page; null (no mouth measurable in any frame) is said so."""
    return "n/a (no mouth found)" if value is None else f"{value:.3f}"
