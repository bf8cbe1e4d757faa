"""`irevla bag export`: demo bags -> the episode store (irevla_ros.core.data.episodes), the format SFT reads.

Each episode of each bag (see irevla_ros.bag.steps) becomes one stored episode: per step the frames of every
camera, the 8-D proprio (EE pose + gripper width, the policy's PROPRIO_LABELS), the executed action, the
intervention flag and the time since the episode began. Discarded episodes (human label 'discard') and
episodes nobody judged (reset/unlabelled) are skipped unless asked for; failures are kept, flagged
`success: false` (job building picks successes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from irevla_ros.bag.steps import EpisodeEnd, EpisodeStart, Step, StepSpec, StepStats, iter_steps
from irevla_ros.bag.storage import BagError, BagReader
from irevla_ros.core.data.episodes import EpisodeMeta, EpisodeWriter

_SAFE_ID = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass
class ExportReport:
    written: list[tuple[str, int, bool]] = field(default_factory=list)
    """(episode_id, steps, success) per stored episode."""
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(episode_id, why) per episode not stored."""
    stats: list[StepStats] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"stored {len(self.written)} episode(s), {sum(n for _, n, _ in self.written)} steps "
                 f"({sum(1 for *_, s in self.written if s)} successful)"]
        lines += [f"  {eid}: {n} steps, success={s}" for eid, n, s in self.written]
        lines += [f"  dropped {eid}: {why}" for eid, why in self.dropped]
        for st in self.stats:
            for reason, n in sorted(st.skipped.items()):
                lines.append(f"  skipped {n} step(s)/message(s): {reason}")
        return "\n".join(lines)


def export_bags(bags: Sequence[str | Path], out: str | Path, spec: StepSpec, *, source: str = "teleop",
                keep_unjudged: bool = False, assume_success: bool = False, recover: bool = False,
                image_format: str = "png") -> ExportReport:
    writer = EpisodeWriter(out, image_format=image_format)
    report = ExportReport()
    for bag in bags:
        reader = BagReader(bag, recover=recover)
        stats = StepStats()
        report.stats.append(stats)
        action_info = reader.topics.get(spec.action_topic)
        fps = action_info.count / reader.duration_s if action_info and reader.duration_s > 0 else 10.0
        recording = None
        t0 = 0.0
        eid = ""
        for item in iter_steps(reader, spec, stats, assume_success=assume_success):
            if isinstance(item, EpisodeStart):
                eid = _SAFE_ID.sub("_", item.episode_id)[:128]
                recording, t0 = None, item.t
            elif isinstance(item, Step):
                if recording is None:
                    recording = writer.begin(EpisodeMeta(
                        task=item.observation.instruction, source=source, cameras=spec.cameras, fps=round(fps, 3),
                        episode_id=eid, extra={"bag": str(bag), "action_topic": spec.action_topic}))
                recording.add_step(action=item.action, state=item.observation.proprio,
                                   images=dict(zip(spec.cameras, item.observation.images, strict=True)),
                                   intervention=item.intervention, timestamp=item.t - t0)
            elif isinstance(item, EpisodeEnd):
                judged = item.label in ("success", "failure", "whole-bag")
                if recording is None:
                    report.dropped.append((eid, "no complete step"))
                elif item.label == "discard" or (not judged and not keep_unjudged):
                    recording.abort(keep=False)
                    report.dropped.append((eid, f"label {item.label}"))
                else:
                    info = recording.finish(item.success, extra={"label": item.label})
                    report.written.append((info.episode_id, info.length, info.success))
                recording = None
    if not report.written and not report.dropped:
        raise BagError(f"no episode could be built from {list(map(str, bags))}: " + report.summary())
    return report
