"""`enact-bench plan DETECTOR... --gpu NAME`: predicted GPU memory per variant and batch size, and
the largest batch that fits, without a GPU (the body is enact_bench.predict.plan; --validate runs the
real step on a CUDA device: enact_bench.predict.validate)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from enact_bench.commands import user_errors
from enact_bench.metrics import MIB


def _mib(b: int | float | None) -> str:
    return "-" if b is None else f"{b / MIB:,.0f}"


def _confirmed(plan) -> str:
    """Where the variants' streams were checked: "4", or "4 (enact: 5)" where the fallback fit ran."""
    from enact_bench.predict.search import AFFINE_CONFIRM

    at = {v.variant: v.affine_confirmed_at for v in plan.variants if v.affine_confirmed_at}
    if not at:
        return f"{AFFINE_CONFIRM} (none confirmed here)"
    common = max(set(at.values()), key=list(at.values()).count)
    other = ", ".join(f"{k}: {b}" for k, b in at.items() if b != common)
    return f"{common}" + (f" ({other})" if other else "")


def plan_title(plan) -> str:
    from enact_bench.predict.search import AFFINE_PROBES

    req = plan.request
    return (f"{req.detector} ({plan.family}) on {req.gpu.name} ({req.gpu.memory_mib:,} MiB, {req.gpu.usable_mib:,} usable, "
            f"budget {req.budget_bytes / MIB:,.0f} MiB = {100 - req.margin_pct:g}% of it), {req.dtype}, image size "
            f"{req.images.label()}, one AdamW training step{', one DDP rank (gradient buckets counted)' if req.ddp else ''}: "
            f"ESTIMATES (fake tensors, CUDA target; row from: fake = a fake run at that batch, affine = the "
            f"allocation stream fitted through fake runs at batch {' and '.join(map(str, AFFINE_PROBES))} and "
            + (f"confirmed exactly by one at {_confirmed(plan)})" if req.images.typical_hw is None else
               f"carried to the typical size with its fake run at {AFFINE_PROBES[0]}: one template for both sizes, "
               f"confirmed exactly by the typical size's fake run at {_confirmed(plan)})"))


def plan_table(plan):
    """A rich table: one row per (variant, batch size), with the typical batch's device memory
    beside each row of a run-worst plan."""
    from rich.table import Table

    from enact_bench.predict.plan import fits_summary

    req = plan.request
    typical = req.images.typical_hw
    t = Table(title=plan_title(plan), title_justify="left")
    cols = ["variant", "batch", "image", "from", "tensor peak MiB", "alloc MiB", "reserved MiB", "device MiB", "fits"]
    if typical:
        cols += [f"typical {typical[0]}x{typical[1]}: device MiB", "fits"]
    for col in cols + ["note"]:
        t.add_column(col, justify="right" if "MiB" in col or col == "batch" else "left")

    def yes(f):
        return "-" if f is None else "[green]yes[/]" if f else "[red]no[/]"

    for v in plan.variants:
        if not v.applicable or v.error or not v.rows:
            t.add_row(v.variant, *["-"] * (len(cols) - 1), fits_summary(v, req))
            continue
        for i, r in enumerate(v.rows):
            note = ""
            if (v.searched and r.batch_size == v.max_batch_size) or (not v.searched and i == 0):
                note = fits_summary(v, req)
            elif i == 0:
                note = v.reason
            hw = f"{r.image_size[0]}x{r.image_size[1]}" if r.image_size else "-"
            cells = [v.variant if i == 0 else "", str(r.batch_size), hw, r.source, _mib(r.tensor_peak_bytes),
                     _mib(r.alloc_peak_bytes), _mib(r.reserved_peak_bytes), _mib(r.device_used_bytes), yes(r.fits)]
            if typical:
                cells += [_mib(r.typical_device_used_bytes), yes(r.typical_fits)]
            t.add_row(*cells, note)
        t.add_section()
    return t


def gpu_table(plans):
    """--gpu all: one row per GPU, one column per variant, the largest batch in each cell (the
    run's worst padded batch, the typical batch's in brackets)."""
    from rich.table import Table

    first = plans[0].request
    typical = first.images.typical_hw
    what = "whether each batch size given fits, per GPU" if first.batch_sizes else "the largest training batch per GPU"
    t = Table(title=f"{first.detector} ({plans[0].family}): {what}, {first.dtype}, image size "
                    f"{first.images.label()}{f' (typical {typical[0]}x{typical[1]} in brackets)' if typical else ''}, "
                    f"margin {first.margin_pct:g}%: ESTIMATES (fake tensors, CUDA target, caching-allocator model, "
                    f"CUDA context estimated per GPU)", title_justify="left")
    t.add_column("gpu")
    t.add_column("usable MiB", justify="right")
    for v in plans[0].variants:
        t.add_column(v.variant, justify="right")
    for p in plans:
        cells = []
        for v in p.variants:
            if not v.applicable:
                cells.append("n/a")
            elif v.error:
                cells.append("[red]error[/]")
            elif v.max_batch_size is None:
                cells.append(", ".join(f"{r.batch_size}: {'yes' if r.fits else 'no'}" for r in v.rows))
            else:
                typ = v.typical.max_batch_size if v.typical is not None else None
                cells.append(f"{v.max_batch_size}" + (f" ({typ})" if typ is not None else ""))
        t.add_row(p.request.gpu.name, f"{p.request.gpu.usable_mib:,}", *cells)
    return t


def plan_summary_table(d: dict):
    """One row per variant of a plan's JSON: the largest batch that fits and what it costs."""
    from rich.table import Table

    g = d["gpu"]
    h, w = d["image_size"]
    t = Table(title=f"Full-size ESTIMATE: {d['detector']} at {h}x{w}, one AdamW training step, on {g['name']} "
                    f"({g.get('usable_mib', g['memory_mib']):,} MiB usable; fake tensors, CUDA target, "
                    f"caching-allocator model, {d.get('seconds', 0):.0f} s)", title_justify="left")
    for c in ("variant", "MiB at batch 2", "MiB per image", "largest batch", "device MiB there", "where the peak goes"):
        t.add_column(c, justify="left" if c in ("variant", "where the peak goes") else "right")
    for v in d["variants"]:
        rows = {r["batch_size"]: r for r in v.get("rows", [])}
        if not v.get("applicable", True) or not rows:
            t.add_row(v["variant"], "-", "-", "-", "-", v.get("error") or f"n/a: {v.get('reason', '')}")
            continue
        r2, top = rows.get(2), rows.get(v.get("max_batch_size"))
        far = max(rows)
        per = (rows[far]["tensor_peak_mib"] - r2["tensor_peak_mib"]) / (far - 2) if r2 and far > 2 else None
        bd = (top or r2 or {}).get("breakdown_mib") or {}
        top2 = ", ".join(f"{k} {val:,.0f}" for k, val in sorted(bd.items(), key=lambda kv: -kv[1])[:2])
        t.add_row(v["variant"], f"{r2['device_used_mib']:,.0f}" if r2 else "-", f"{per:,.0f}" if per else "-",
                  str(v.get("max_batch_size")), f"{top['device_used_mib']:,.0f}" if top else "-", top2)
    return t


def steps_table(plan):
    """--steps: per variant, the run of drawn shapes through one allocator model against one step
    of the worst shape."""
    from rich.table import Table

    runs = [(v, v.steps) for v in plan.variants if v.steps is not None]
    if not runs:
        return None
    s0 = runs[0][1]
    t = Table(title=f"{plan.request.detector}: {s0.steps} training steps of drawn padded shapes (seed {s0.seed}; sources: "
                    f"{s0.sources}; sizes rounded up to multiples of {s0.quantum} px) through one caching-allocator "
                    f"model on {plan.request.gpu.name}, against one step of the worst shape: ESTIMATES",
              title_justify="left")
    for col in ("variant", "batch", "distinct shapes", "worst shape", "one worst step: reserved / device MiB",
                "the run: reserved after / peak device MiB", "run fits", "note"):
        t.add_column(col, justify="right" if "MiB" in col or col in ("batch", "distinct shapes") else "left")
    for v, s in runs:
        note = f"out of memory at step {s.oom_step}" if s.oom_step else (
            f"cached segments released {s.retries} times" if s.retries else "")
        t.add_row(v.variant, str(s.batch_size), str(len(set(s.shapes))), f"{s.worst_hw[0]}x{s.worst_hw[1]}",
                  f"{_mib(s.one_step_reserved_bytes)} / {_mib(s.one_step_device_bytes)}",
                  f"{_mib(s.run_reserved_bytes)} / {_mib(s.run_device_bytes)}",
                  "[green]yes[/]" if s.fits else "[red]no[/]", note)
    return t


def breakdown_table(plan):
    """The peak's breakdown at each variant's largest fitting batch, when the estimate has one."""
    from rich.table import Table

    rows = []
    for v in plan.variants:
        r = next((r for r in v.rows if r.batch_size == v.max_batch_size and r.breakdown_mib), None)
        if r is not None:
            rows.append((v.variant, r))
    if not rows:
        return None
    flat = [(v, r, _flatten(r.breakdown_mib)) for v, r in rows]
    keys = list(dict.fromkeys(k for _, _, f in flat for k in f))
    t = Table(title=f"{plan.request.detector}: where the peak goes at the largest batch (MiB, estimate)",
              title_justify="left")
    t.add_column("part")
    for v, r, _ in flat:
        t.add_column(f"{v} b{r.batch_size}", justify="right")
    for k in keys:
        t.add_row(k, *[f"{f.get(k, 0.0):,.1f}" for _, _, f in flat])
    return t


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def check_json_out(path: Path | None) -> bool:
    """--json: None (no JSON), "-" (stdout: True is returned) or a file that can be written; a
    directory, a path under a file or an unwritable place is a UserInputError now, before the
    estimate."""
    import os

    from enact_bench.errors import UserInputError

    if path is None or str(path) == "-":
        return path is not None
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserInputError(f"--json {path}: is a directory; expected a file name (or - for stdout)")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserInputError(f"--json {path}: the file is not writable")
    for q in p.parents:
        if q.exists():
            if not q.is_dir():
                raise UserInputError(f"--json {path}: {q} is a file, not a folder")
            if not os.access(q, os.W_OK | os.X_OK):
                raise UserInputError(f"--json {path}: {q} is not writable")
            break
    return False


def check_plot_out(path: Path) -> None:
    """--plot: a .png or .svg file that can be written; else a UserInputError, before the estimate."""
    from enact_bench.errors import UserInputError

    if Path(path).suffix.lower() not in (".png", ".svg"):
        raise UserInputError(f"--plot {path}: expected a .png or .svg file name")
    try:
        check_json_out(Path(path))
    except UserInputError as e:
        raise UserInputError(str(e).replace("--json", "--plot").replace(" (or - for stdout)", "")) from None


def _variant_list(text: str | None, families: dict[str, str]) -> tuple[str, ...] | None:
    """--variants: the default list (None: each detector's own, `_variants_of`), or the user's
    (each known; the fused ones only where the family's encoder attention is dense: asked for
    explicitly elsewhere, a UserInputError; a source model says per variant whether it applies)."""
    from enact_bench.errors import UserInputError
    from enact_bench.predict.plan import ALL_VARIANTS, FUSED_FAMILIES

    if text is None:
        return None
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in names if v not in ALL_VARIANTS]
    if bad or not names:
        raise UserInputError(f"--variants {text!r}: expected a comma list of {', '.join(ALL_VARIANTS)}")
    if "enact+fused" in names:
        from enact_bench.detectors.sources import is_source_name

        off = [d for d, f in families.items() if f not in FUSED_FAMILIES and not is_source_name(d)]
        if off:
            raise UserInputError(f"--variants enact+fused: {', '.join(off)} has no dense encoder attention to fuse "
                                 f"(only {', '.join(sorted(FUSED_FAMILIES))} do); use --variants enact")
    return names


def _variants_of(detector: str, names: tuple[str, ...] | None, overrides: dict) -> tuple[str, ...]:
    """The variants planned for `detector`: the user's, else the default (a registered detector:
    original, fused, enact, enact+fused; a source model: original, eager, enact). A source
    model's --set is checked here, before any fake step; a registered detector takes none."""
    from enact_bench.detectors.sources import DEFAULT_SOURCE_VARIANTS, check_source_build, is_source_name
    from enact_bench.errors import UserInputError
    from enact_bench.predict.plan import VARIANTS

    if not is_source_name(detector):
        if overrides:
            raise UserInputError(f"--set applies to source models (hf:..., factories); {detector} is a registered "
                                 f"detector (its options are a suite's overrides)")
        return names or VARIANTS
    check_source_build(detector, overrides)
    return names or DEFAULT_SOURCE_VARIANTS


def _set_options(items: list[str] | None) -> dict:
    """--set KEY=VALUE items as a dict (values read as TOML, else as strings)."""
    from enact_bench.suite import parse_set_option

    return dict(parse_set_option(t) for t in items or ())


def _raise_if_all_user_errors(plan) -> None:
    """Every applicable variant failed on a user error (a factory model whose output has no loss,
    ...): one line, exit 2, rather than a table of errors."""
    from enact_bench.errors import UserInputError

    tried = [v for v in plan.variants if v.applicable]
    if tried and all(v.user_error for v in tried):
        raise UserInputError(tried[0].error)


def source_lines(plan) -> list[str]:
    """Lines under a source model's table: its padded size, HF's quirks planned as they are, the
    attention each variant was built with and what the fake-tensor policy assumed."""
    lines = []
    if plan.size_note:
        lines.append(f"[dim]{plan.request.detector}: {plan.size_note}[/]")
    for note in plan.notes:
        lines.append(f"[dim]{plan.request.detector}: note: {note}[/]")
    ran = [v for v in plan.variants if v.attention or v.assumptions]
    if ran:
        lines.append(f"[dim]{plan.request.detector}: attention as built: "
                     + ", ".join(f"{v.variant} {v.attention or '-'}" for v in ran) + "[/]")
    groups: dict[tuple, list[str]] = {}
    for v in ran:
        groups.setdefault(tuple(v.assumptions), []).append(v.variant)
    for assumed, which in groups.items():
        who = "every variant" if len(which) == len(ran) else ", ".join(which)
        lines.append(f"[dim]{plan.request.detector}, {who}: the fake step assumed: {'; '.join(assumed) or 'nothing'}[/]")
    return lines


SOURCE_DEFAULT_SIZE = "800x1333"  # a source model's default --image-size (no augmentation of its known)


def _progress(err_console):
    """The reporter for predict/progress.py: a status line on a terminal, else one line each."""
    from contextlib import contextmanager

    from rich.markup import escape

    @contextmanager
    def shown():
        if err_console.is_terminal:
            with err_console.status("planning ...") as status:
                yield lambda m: status.update(escape(m))
        else:
            yield lambda m: err_console.print(escape(m), highlight=False, soft_wrap=True)
    return shown()


def register(app: typer.Typer) -> None:
    @app.command("plan")
    @user_errors
    def plan(
        detectors: list[str] = typer.Argument(..., help="registered detector names (enact-bench list), or model "
                                                        "sources: hf:MODEL_TYPE, hf:PATH, py:PKG.MODULE:FACTORY, "
                                                        "FILE.py:FACTORY (docs/own-model.md)"),
        gpu: str = typer.Option(None, "--gpu", help="GPU model, e.g. h100-80gb, a100-40gb, v100-16gb, rtx4090-24gb "
                                                    "(enact-bench list shows them)"),
        gpu_mem: float = typer.Option(None, "--gpu-mem", help="or the GPU's memory in GiB"),
        image_size: str = typer.Option(None, "--image-size",
                                       help="'run-worst' (default for registered detectors: the largest padded batch "
                                            "the training augmentation forms at each batch size, the typical 800x1333 "
                                            "beside it) or HxW (fixed; default for hf:/factory models: 800x1333)"),
        batch_size: list[int] = typer.Option(None, "--batch-size", "-b",
                                             help="batch sizes to estimate (repeatable): says whether each fits; "
                                                  "default: search the largest that fits"),
        dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16 (autocast)"),
        enact_cluster_size: int = typer.Option(6, "--enact-cluster-size", help="ENACT's fixed cluster size L"),
        variants: str = typer.Option(None, "--variants",
                                     help="comma list of original, fused, enact, enact+fused (default: all four; "
                                          "the fused ones where the encoder's attention is dense) and, for hf:/factory "
                                          "models, eager (their default: original,eager,enact)"),
        set_: list[str] = typer.Option(None, "--set", help="KEY=VALUE for a source model, every variant: "
                                                           "config.FIELD=VALUE (hf:), attn_implementation, tiny=true, "
                                                           "or a factory's parameter (repeatable)"),
        margin: float = typer.Option(5.0, "--margin", help="percent of the GPU's memory kept free"),
        json_out: Path = typer.Option(None, "--json", help="write the plan(s) as JSON to this file (- : stdout, "
                                                          "the tables then on stderr)"),
        validate: bool = typer.Option(False, "--validate",
                                      help="on a CUDA GPU: run the real training step at the planned batch sizes"),
        jobs: int = typer.Option(None, "--jobs", help="parallel processes for the variants (default: one each)"),
        ddp: bool = typer.Option(False, "--ddp", help="one DistributedDataParallel rank: adds DDP's gradient buckets "
                                                      "(the trainable parameters' bytes) to every row"),
        fake_runs: bool = typer.Option(False, "--fake-runs",
                                       help="run every row as a fake training step of its own (no affine stream; slower)"),
        steps: int = typer.Option(None, "--steps",
                                  help="also replay N training steps of padded shapes drawn from the augmentation "
                                       "through one allocator model (at each variant's largest batch), against one "
                                       "step of the worst shape"),
        seed: int = typer.Option(0, "--seed", help="--steps: the seed of the drawn shapes"),
        plot: Path = typer.Option(None, "--plot", help="draw the plan to this .png or .svg file: memory against batch "
                                                       "size per variant (one GPU), the largest batch per GPU (--gpu all)"),
        sizes_from: Path = typer.Option(None, "--sizes-from",
                                        help="a COCO annotation file: its images' sizes are the source images of "
                                             "--steps and of the run-worst size (default: a labelled assumption)"),
    ) -> None:
        """Predict training memory per variant and batch size on a GPU, without one."""
        from enact_bench.console import console, err_console
        from enact_bench.errors import UserInputError
        from enact_bench.predict.progress import reporting

        every_gpu = gpu is not None and gpu.strip().lower() == "all"
        if every_gpu and gpu_mem is not None:
            raise UserInputError("--gpu all plans every GPU of the table; --gpu-mem describes one GPU: give one of them")
        if every_gpu and steps:
            raise UserInputError("--steps replays a run on one GPU: give --gpu NAME, not all")
        if every_gpu and validate:
            raise UserInputError("--validate checks one GPU's plan on this machine's GPU: give --gpu NAME, not all")
        if (gpu is None) == (gpu_mem is None):
            raise UserInputError("give exactly one of --gpu NAME (or all) or --gpu-mem GIB")
        if steps is not None and steps < 1:
            raise UserInputError(f"--steps {steps}: give at least 1 training step (or leave --steps out)")
        sources = None
        if sizes_from is not None:
            from enact_bench.data.augmentation_sizes import coco_image_sizes

            try:
                sources = tuple(coco_image_sizes(sizes_from))
            except ValueError as e:
                raise UserInputError(f"--sizes-from {e}") from None
        to_stdout = check_json_out(json_out)
        if plot is not None:
            check_plot_out(plot)
        out_console = err_console if to_stdout else console  # with --json -, stdout holds the JSON alone
        if validate:
            from enact_bench.predict.validate import require_cuda
            require_cuda()
        from enact_bench.predict.gpus import GPUS, custom_gpu, get_gpu

        try:
            every = tuple(GPUS.values()) if every_gpu else ()
            spec = every[0] if every_gpu else get_gpu(gpu) if gpu is not None else custom_gpu(gpu_mem)
        except ValueError as e:
            raise UserInputError(str(e)) from None
        from enact_bench.predict.image_sizes import parse_image_size
        from enact_bench.predict.plan import PlanRequest
        from enact_bench.predict.planner import detector_family, plan_detector, plan_detector_gpus

        from enact_bench.detectors.sources import is_source_name

        families = {det: detector_family(det) for det in detectors}
        names = _variant_list(variants, families)
        overrides = _set_options(set_)
        requests = []
        for det, family in families.items():
            size = image_size or (SOURCE_DEFAULT_SIZE if is_source_name(det) else "run-worst")
            images = parse_image_size(size, family, sources, str(sizes_from or ""))
            requests.append(PlanRequest(det, spec, images.padded_hw, tuple(batch_size or ()), dtype,
                                        enact_cluster_size, _variants_of(det, names, overrides), margin, jobs=jobs,
                                        ddp=ddp, affine=not fake_runs, images=images, steps=steps or 0, seed=seed,
                                        source_sizes=sources, sources_label=f"{sizes_from}" if sizes_from else "",
                                        overrides=overrides if is_source_name(det) else {},
                                        curve_points=8 if plot is not None and not every else 0))
        out = []
        for req in requests:
            if every:
                with _progress(err_console) as show, reporting(show):
                    plans = plan_detector_gpus(req, every)
                out_console.print(gpu_table(plans))
                out_console.print(f"[dim]{req.detector}: {plans[0].seconds:.1f} s, {len(plans)} GPUs[/]")
                out += [p.as_dict() for p in plans]
                continue
            with _progress(err_console) as show, reporting(show):
                p = plan_detector(req)
            _raise_if_all_user_errors(p)
            out_console.print(plan_table(p))
            for line in source_lines(p):
                out_console.print(line, highlight=False)
            bt = breakdown_table(p)
            if bt is not None:
                out_console.print(bt)
            st = steps_table(p)
            if st is not None:
                out_console.print(st)
            for v in p.variants:
                if v.affine_note and v.affine_note.startswith("no affine"):
                    err_console.print(f"[yellow]{req.detector} {v.variant}: {v.affine_note}[/]")
                if v.linear is False:
                    err_console.print(f"[yellow]{req.detector} {v.variant}: the tensor peak is not linear in the batch "
                                      f"size here; every row is a fake run of its own[/]")
            out_console.print(f"[dim]{req.detector}: {p.seconds:.1f} s[/]")
            d = p.as_dict()
            if validate:
                from enact_bench.predict.validate import device_name, validate_plan, validation_table
                d["validation"] = validate_plan(p)
                d["validation_device"] = device_name()
                out_console.print(validation_table(d))
            out.append(d)
        if plot is not None:
            from enact_bench.report.plot_plan import plan_figure

            groups: dict = {}
            for d in out:
                groups.setdefault(d["detector"], []).append(d)
            for det, plans in groups.items():
                target = plot if len(groups) == 1 else plot.with_name(f"{plot.stem}-{det}{plot.suffix}")
                plan_figure(plans, target)
                out_console.print(f"[dim]drew {target}[/]")
        if json_out is not None:
            text = json.dumps(out[0] if len(out) == 1 else out, indent=1)
            if to_stdout:
                import sys

                sys.stdout.write(text + "\n")
                sys.stdout.flush()
            else:
                json_out.parent.mkdir(parents=True, exist_ok=True)
                json_out.write_text(text)
                out_console.print(f"[dim]wrote {json_out}[/]")
