"""rosbag2-compatible MCAP bags: a splitting writer and a reader that explains what is wrong (ROS-free).

Layout written (what `ros2 bag record -s mcap` writes, so `ros2 bag info/play` read it on a real install):

    BAG/metadata.yaml          rosbag2 metadata (version 8), rewritten atomically at open, at each split, at close
    BAG/BAG_0.mcap, BAG_1.mcap profile "ros2": schemas "ros2msg" (message definitions), channels "cdr"

Messages are the CDR bytes the DDS layer delivered (rclpy raw subscriptions), so nothing is re-encoded.
Reading accepts such a folder, a bare .mcap file, a folder of .mcap files without metadata (a recorder that
died), and rosbag2 sqlite3 bags (through rosbags). A file that was never closed has no MCAP summary: the reader
refuses it with an explanation, or, with `recover=True`, salvages every complete chunk.

Deserialization for export/eval uses rosbags' typestore (pure Python), so it works without ROS.
"""

from __future__ import annotations

import heapq
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import yaml

ROS2_PROFILE = "ros2"
SCHEMA_ENCODING = "ros2msg"
MESSAGE_ENCODING = "cdr"
METADATA_VERSION = 8
DURABILITY_KEY = "irevla_durability"
"""Extra channel metadata: 'transient_local' for latched topics, so a player re-latches them."""


class BagError(ValueError):
    """A bag that cannot be read or written as asked; the message names the file and what to do."""


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    log_time_ns: int
    data: bytes


@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int = 0
    durability: str = "volatile"


def match_topics(topic: str, patterns: Iterable[str]) -> bool:
    """fnmatch-style selection: '/cameras/*' matches every camera topic, '*' everything."""
    return any(fnmatch(topic, p) for p in patterns)


# --- Message definitions and (ROS-free) deserialization. -------------------------------------------------
class TypeRegistry:
    """Message definitions for writing schemas and a rosbags typestore for reading messages without ROS."""

    def __init__(self) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.store = get_typestore(Stores.LATEST)

    def knows(self, msgtype: str) -> bool:
        return msgtype in self.store.types

    def _load_from_share(self, msgtype: str) -> None:
        """Types missing from rosbags' store: read the .msg the ROS package installed under share/."""
        from rosbags.typesys import get_types_from_msg

        pkg, kind, name = msgtype.split("/")
        prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
        prefixes.append(sys.prefix)  # the PyPI ROS wheels install share/ into the venv
        for prefix in prefixes:
            path = Path(prefix) / "share" / pkg / kind / f"{name}.msg"
            if path.is_file():
                self.store.register(get_types_from_msg(path.read_text(), msgtype))
                return
        raise BagError(f"no message definition for {msgtype} (not in rosbags' store, no share/{pkg}/{kind}/"
                       f"{name}.msg under {prefixes})")

    def msgdef(self, msgtype: str) -> tuple[str, str]:
        """(ros2msg definition text with dependencies, RIHS01 type hash)."""
        if not self.knows(msgtype):
            self._load_from_share(msgtype)
        text, _ = self.store.generate_msgdef(msgtype, ros_version=2)
        return text, self.store.hash_rihs01(msgtype)

    def register_schema(self, msgtype: str, encoding: str, text: str) -> None:
        """Learn a type from a bag's own schema (for bags with types this store lacks)."""
        if self.knows(msgtype) or encoding != SCHEMA_ENCODING or not text:
            return
        from rosbags.typesys import get_types_from_msg

        types: dict = {}
        parts = text.split("=" * 80 + "\n")
        try:
            types.update(get_types_from_msg(parts[0], msgtype))
            for part in parts[1:]:
                header, _, body = part.partition("\n")
                if header.startswith("MSG: "):
                    sub = header[5:].strip()
                    if "/msg/" not in sub:
                        sub = sub.replace("/", "/msg/")
                    types.update(get_types_from_msg(body, sub))
            self.store.register({k: v for k, v in types.items() if k not in self.store.types})
        except Exception as exc:  # noqa: BLE001 - a bag's schema text is outside input
            raise BagError(f"the bag's definition of {msgtype} cannot be parsed: {exc}") from exc

    def deserialize(self, data: bytes, msgtype: str):
        if not self.knows(msgtype):
            self._load_from_share(msgtype)
        try:
            return self.store.deserialize_cdr(data, msgtype)
        except Exception as exc:  # noqa: BLE001 - any decoding failure means a corrupt message
            # Fast-CDR (what DDS puts on the wire) pads empty float64 sequences for alignment where rosbags'
            # strict size check expects none: accept up to 8 bytes of trailing padding, nothing more.
            message = self._deserialize_padded(data, msgtype)
            if message is not None:
                return message
            raise BagError(f"cannot decode a {msgtype} message ({len(data)} bytes): {exc}") from exc

    def _deserialize_padded(self, data: bytes, msgtype: str):
        if len(data) < 4 or data[:2] not in (b"\x00\x00", b"\x00\x01"):
            return None
        msgdef = self.store.get_msgdef(msgtype)
        func = msgdef.deserialize_cdr_le if data[1] else msgdef.deserialize_cdr_be
        try:
            message, pos = func(memoryview(data)[4:], 0, msgdef.cls, self.store)
        except Exception:  # noqa: BLE001
            return None
        padding = len(data) - 4 - pos
        return message if 0 <= padding <= 8 and not any(data[4 + pos:]) else None


# --- Writer. ------------------------------------------------------------------------------------------------
@dataclass
class _FileStats:
    path: str
    start: int = 2**63 - 1
    end: int = 0
    count: int = 0


@dataclass
class _Topic:
    info: TopicInfo
    msgdef: str
    type_hash: str
    channel_id: int = -1


class BagWriter:
    """Writes a rosbag2 MCAP bag, splitting files by duration/size; chunks are closed and flushed every
    `flush_period_s`, so a killed process loses at most that much (the tail stays readable with `recover`).

    Not thread-safe: call from one thread (the recorder's executor).
    """

    def __init__(self, path: str | os.PathLike, *, split_duration_s: float = 0.0, split_size_mb: float = 0.0,
                 compression: str = "none", chunk_size: int = 1 << 20, registry: TypeRegistry | None = None,
                 flush_period_s: float = 1.0):
        if compression not in ("none", "zstd", "lz4"):
            raise BagError(f"compression must be none, zstd or lz4, got {compression!r}")
        if split_duration_s < 0 or split_size_mb < 0:
            raise BagError("split_duration_s and split_size_mb must be >= 0 (0 = no split)")
        self.path = Path(path)
        if self.path.exists() and any(self.path.iterdir()):
            raise BagError(f"{self.path} exists and is not empty; not overwriting a bag")
        self.path.mkdir(parents=True, exist_ok=True)
        self.split_duration_ns = int(split_duration_s * 1e9)
        self.split_size = int(split_size_mb * 1e6)
        self.compression = compression
        self.chunk_size = chunk_size
        self.registry = registry or TypeRegistry()
        self.flush_period_s = flush_period_s
        self.topics: dict[str, _Topic] = {}
        self.files: list[_FileStats] = []
        self._file = None
        self._writer = None
        self._schema_ids: dict[str, int] = {}
        self._last_flush = time.monotonic()
        self.closed = False
        self._open_file()

    def _open_file(self) -> None:
        from mcap.writer import CompressionType, Writer

        name = f"{self.path.name}_{len(self.files)}.mcap"
        self._file = open(self.path / name, "xb")  # noqa: SIM115 - closed in _close_file
        comp = {"none": CompressionType.NONE, "zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4}
        self._writer = Writer(self._file, chunk_size=self.chunk_size, compression=comp[self.compression])
        self._writer.start(profile=ROS2_PROFILE, library="irevla_ros")
        self._schema_ids = {}
        self.files.append(_FileStats(name))
        for topic in self.topics.values():
            self._register(topic)
        self._write_metadata()

    def _register(self, topic: _Topic) -> None:
        assert self._writer is not None
        msgtype = topic.info.msgtype
        if msgtype not in self._schema_ids:
            self._schema_ids[msgtype] = self._writer.register_schema(msgtype, SCHEMA_ENCODING, topic.msgdef.encode())
        meta = {"offered_qos_profiles": ""}
        if topic.info.durability != "volatile":
            meta[DURABILITY_KEY] = topic.info.durability
        topic.channel_id = self._writer.register_channel(topic.info.name, MESSAGE_ENCODING,
                                                         self._schema_ids[msgtype], meta)

    def add_topic(self, name: str, msgtype: str, durability: str = "volatile") -> None:
        if name in self.topics:
            if self.topics[name].info.msgtype != msgtype:
                raise BagError(f"topic {name} already recorded as {self.topics[name].info.msgtype}, not {msgtype}")
            return
        text, type_hash = self.registry.msgdef(msgtype)
        topic = _Topic(TopicInfo(name, msgtype, 0, durability), text, type_hash)
        self.topics[name] = topic
        self._register(topic)

    def write(self, topic: str, log_time_ns: int, data: bytes) -> None:
        if self.closed:
            raise BagError(f"bag {self.path} is closed")
        t = self.topics.get(topic)
        if t is None:
            raise BagError(f"topic {topic} was not added to the bag")
        current = self.files[-1]
        if current.count and (
            (self.split_duration_ns and log_time_ns - current.start >= self.split_duration_ns)
            or (self.split_size and self._file.tell() >= self.split_size)
        ):
            self._close_file()
            self._open_file()
            current = self.files[-1]
        self._writer.add_message(t.channel_id, log_time=log_time_ns, data=bytes(data), publish_time=log_time_ns,
                                 sequence=t.info.count)
        t.info.count += 1
        current.count += 1
        current.start = min(current.start, log_time_ns)
        current.end = max(current.end, log_time_ns)
        if time.monotonic() - self._last_flush >= self.flush_period_s:
            self.flush()

    def flush(self) -> None:
        """Close the open chunk and hand everything to the OS: a crash after this loses nothing written so far
        (the recorder calls it every `flush_period_s` even when no message arrives)."""
        if self.closed or self._writer is None:
            return
        self._writer.flush()
        self._last_flush = time.monotonic()

    def _close_file(self) -> None:
        self._writer.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._writer = None

    def _write_metadata(self) -> None:
        files = self.files
        counted = [f for f in files if f.count]
        start = min((f.start for f in counted), default=0)
        end = max((f.end for f in counted), default=0)
        info = {
            "version": METADATA_VERSION,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": max(0, end - start)},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": sum(f.count for f in files),
            "topics_with_message_count": [
                {"topic_metadata": {"name": t.info.name, "type": t.info.msgtype, "serialization_format": "cdr",
                                    "offered_qos_profiles": "", "type_description_hash": t.type_hash},
                 "message_count": t.info.count}
                for t in self.topics.values()
            ],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [f.path for f in files],
            "files": [{"path": f.path, "starting_time": {"nanoseconds_since_epoch": f.start if f.count else 0},
                       "duration": {"nanoseconds": max(0, f.end - f.start) if f.count else 0},
                       "message_count": f.count} for f in files],
            "custom_data": {"writer": "irevla_ros"},
            "ros_distro": os.environ.get("ROS_DISTRO", "unknown"),
        }
        tmp = self.path / ".metadata.yaml.tmp"
        tmp.write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False))
        os.replace(tmp, self.path / "metadata.yaml")

    def close(self) -> None:
        if self.closed:
            return
        self._close_file()
        self._write_metadata()
        self.closed = True

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def message_count(self) -> int:
        return sum(f.count for f in self.files)


# --- Reader. ------------------------------------------------------------------------------------------------
@dataclass
class _McapSource:
    path: Path
    channels: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (topic, msgtype)
    recovered: list[BagMessage] | None = None
    """Messages salvaged from a file without a summary (recover mode), else None (indexed reads)."""


class BagReader:
    """Reads a bag in log-time order. Raises BagError naming the file and the problem."""

    def __init__(self, path: str | os.PathLike, *, recover: bool = False, registry: TypeRegistry | None = None):
        self.path = Path(path)
        self.recover = recover
        self.registry = registry or TypeRegistry()
        self.topics: dict[str, TopicInfo] = {}
        self.problems: list[str] = []
        self.start_ns = 2**63 - 1
        self.end_ns = 0
        self._mcaps: list[_McapSource] = []
        self._sqlite: Path | None = None
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        self._open()
        if self.message_count == 0:
            self.start_ns = self.end_ns = 0

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics.values())

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) * 1e-9

    def _open(self) -> None:
        if self.path.is_file():
            if self.path.suffix != ".mcap":
                raise BagError(f"{self.path} is not a bag (expected a rosbag2 folder or an .mcap file)")
            self._open_mcap(self.path)
            return
        meta = self.path / "metadata.yaml"
        if meta.is_file():
            try:
                info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
                storage = info.get("storage_identifier", "")
                files = [self.path / f for f in info.get("relative_file_paths", [])]
            except Exception as exc:  # noqa: BLE001 - any malformed metadata is the same error
                raise BagError(f"{meta} is not valid rosbag2 metadata: {exc}") from exc
            outside = [f.name for f in files if f.resolve().parent != self.path.resolve()]
            if outside:
                raise BagError(f"{meta} lists files outside the bag folder: {outside}")
            if info.get("compression_mode"):
                raise BagError(f"{self.path} uses rosbag2 {info.get('compression_mode')} compression "
                               f"({info.get('compression_format')}); convert it first (ros2 bag convert)")
            if storage == "sqlite3":
                self._open_sqlite()
                return
            if storage != "mcap":
                raise BagError(f"{self.path}: storage {storage!r} is not supported (mcap, sqlite3)")
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise BagError(f"{self.path}: files listed in metadata.yaml are missing: {missing}")
        else:
            files = sorted(self.path.glob("*.mcap"))
            if not files:
                raise BagError(f"{self.path} is not a bag: no metadata.yaml and no .mcap files")
            self.problems.append(f"{self.path} has no metadata.yaml (recorder did not close); reading "
                                 f"{len(files)} .mcap file(s)")
        for f in files:
            self._open_mcap(f)

    def _learn(self, msgtype: str, encoding: str, text: str) -> None:
        """Register a type from the bag's schema; a bad one only costs decoding (replay needs no decoding)."""
        try:
            self.registry.register_schema(msgtype, encoding, text)
        except BagError as exc:
            self.problems.append(str(exc))

    def _add_topic(self, topic: str, msgtype: str, count: int, durability: str) -> None:
        known = self.topics.get(topic)
        if known is None:
            self.topics[topic] = TopicInfo(topic, msgtype, count, durability)
        elif known.msgtype != msgtype:
            raise BagError(f"{self.path}: topic {topic} has two types ({known.msgtype}, {msgtype})")
        else:
            known.count += count

    def _open_mcap(self, path: Path) -> None:
        from mcap.exceptions import McapError
        from mcap.reader import make_reader

        source = _McapSource(path)
        try:
            with open(path, "rb") as f:
                reader = make_reader(f)
                header = reader.get_header()
                summary = reader.get_summary()
        except (McapError, OSError, ValueError, EOFError, KeyError) as exc:
            summary, header = None, None
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "no summary section (the file was not closed: recorder crashed or still running)"
        if header is not None and header.profile not in (ROS2_PROFILE, ""):
            raise BagError(f"{path}: MCAP profile {header.profile!r} is not ros2")
        if summary is None or summary.statistics is None:
            if not self.recover:
                raise BagError(f"{path} is truncated or corrupt ({reason}). Use recover (irevla bag play "
                               f"--recover / bag_player recover:=true) to read its complete chunks.")
            self._recover_mcap(source, reason)
            return
        for cid, ch in summary.channels.items():
            schema = summary.schemas.get(ch.schema_id)
            if schema is None or ch.message_encoding != MESSAGE_ENCODING:
                self.problems.append(f"{path}: skipping channel {ch.topic} (encoding {ch.message_encoding!r})")
                continue
            self._learn(schema.name, schema.encoding, schema.data.decode(errors="replace"))
            source.channels[cid] = (ch.topic, schema.name)
            count = summary.statistics.channel_message_counts.get(cid, 0)
            self._add_topic(ch.topic, schema.name, count, ch.metadata.get(DURABILITY_KEY, "volatile"))
        if summary.statistics.message_count:
            self.start_ns = min(self.start_ns, summary.statistics.message_start_time)
            self.end_ns = max(self.end_ns, summary.statistics.message_end_time)
        self._mcaps.append(source)

    def _recover_mcap(self, source: _McapSource, reason: str) -> None:
        from mcap.records import Channel, Message, Schema
        from mcap.stream_reader import StreamReader

        schemas: dict[int, Schema] = {}
        messages: list[BagMessage] = []
        durability: dict[str, str] = {}
        error = ""
        with open(source.path, "rb") as f:
            try:
                for record in StreamReader(f, validate_crcs=True, record_size_limit=1 << 30).records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel) and record.schema_id in schemas:
                        schema = schemas[record.schema_id]
                        self._learn(schema.name, schema.encoding, schema.data.decode("utf-8", "replace"))
                        source.channels[record.id] = (record.topic, schema.name)
                        durability[record.topic] = record.metadata.get(DURABILITY_KEY, "volatile")
                    elif isinstance(record, Message) and record.channel_id in source.channels:
                        topic, msgtype = source.channels[record.channel_id]
                        messages.append(BagMessage(topic, msgtype, record.log_time, bytes(record.data)))
            except Exception as exc:  # noqa: BLE001 - the truncation point: keep what came before
                error = f"{type(exc).__name__}: {exc}"
        messages.sort(key=lambda m: m.log_time_ns)
        source.recovered = messages
        counts: dict[str, int] = {}
        for m in messages:
            counts[m.topic] = counts.get(m.topic, 0) + 1
        for cid_topic, msgtype in source.channels.values():
            self._add_topic(cid_topic, msgtype, counts.get(cid_topic, 0), durability.get(cid_topic, "volatile"))
        if messages:
            self.start_ns = min(self.start_ns, messages[0].log_time_ns)
            self.end_ns = max(self.end_ns, messages[-1].log_time_ns)
        self.problems.append(f"{source.path}: {reason}; recovered {len(messages)} messages"
                             + (f", stopped at: {error}" if error else ""))
        self._mcaps.append(source)

    def _open_sqlite(self) -> None:
        from rosbags.rosbag2 import Reader

        try:
            with Reader(self.path) as reader:
                for conn in reader.connections:
                    self._add_topic(conn.topic, conn.msgtype, conn.msgcount, "volatile")
                    if conn.msgdef.data:
                        self._learn(conn.msgtype, SCHEMA_ENCODING, conn.msgdef.data)
                if reader.message_count:
                    self.start_ns, self.end_ns = reader.start_time, reader.end_time
        except Exception as exc:  # noqa: BLE001 - rosbags raises several error types
            raise BagError(f"{self.path}: cannot read sqlite3 bag: {exc}") from exc
        self._sqlite = self.path

    def _iter_mcap(self, source: _McapSource, topics: set[str]) -> Iterator[BagMessage]:
        if source.recovered is not None:
            yield from (m for m in source.recovered if m.topic in topics)
            return
        from mcap.reader import make_reader

        try:
            with open(source.path, "rb") as f:
                reader = make_reader(f, validate_crcs=True)
                for _schema, channel, message in reader.iter_messages(topics=sorted(topics), log_time_order=True):
                    if channel.id not in source.channels:
                        continue
                    topic, msgtype = source.channels[channel.id]
                    yield BagMessage(topic, msgtype, message.log_time, bytes(message.data))
        except (OSError, ValueError, EOFError, KeyError) as exc:
            raise BagError(f"{source.path} is corrupt ({type(exc).__name__}: {exc}); try recover") from exc
        except Exception as exc:  # noqa: BLE001 - mcap raises its own error types (CRC, record, decompression)
            raise BagError(f"{source.path} is corrupt ({type(exc).__name__}: {exc}); try recover") from exc

    def _iter_sqlite(self, topics: set[str]) -> Iterator[BagMessage]:
        from rosbags.rosbag2 import Reader

        try:
            with Reader(self.path) as reader:
                conns = [c for c in reader.connections if c.topic in topics]
                for conn, timestamp, data in reader.messages(connections=conns):
                    yield BagMessage(conn.topic, conn.msgtype, timestamp, bytes(data))
        except Exception as exc:  # noqa: BLE001
            raise BagError(f"{self.path}: cannot read sqlite3 bag: {exc}") from exc

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Messages of the selected topics (names or fnmatch patterns; None = all), in log-time order."""
        patterns = list(topics) if topics is not None else ["*"]
        selected = {t for t in self.topics if match_topics(t, patterns)}
        if not selected:  # (both storage readers treat an empty selection as "everything")
            return
        if self._sqlite is not None:
            yield from self._iter_sqlite(selected)
            return
        streams = [self._iter_mcap(s, selected) for s in self._mcaps]
        yield from heapq.merge(*streams, key=lambda m: m.log_time_ns)

    def summary(self) -> str:
        lines = [f"bag: {self.path}", f"duration: {self.duration_s:.3f} s", f"messages: {self.message_count}"]
        width = max((len(t) for t in self.topics), default=10)
        for t in sorted(self.topics.values(), key=lambda t: t.name):
            lines.append(f"  {t.name:<{width}}  {t.count:>8}  {t.msgtype}")
        lines += [f"warning: {p}" for p in self.problems]
        return "\n".join(lines)
