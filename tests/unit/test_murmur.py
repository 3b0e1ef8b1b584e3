"""streams.murmur gives the hash of aiokafka's (Kafka's default partitioner) for any key."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as reference
from hypothesis import given
from hypothesis import strategies as st

from streams.murmur import murmur2, partition_for


@given(st.binary(max_size=200))
def test_same_hash_as_aiokafka(data: bytes) -> None:
    assert murmur2(data) == reference(data)


def test_known_keys_and_every_tail_length() -> None:
    # Kafka's own test vectors (org.apache.kafka.common.utils.UtilsTest#testMurmur2)
    assert murmur2(b"21") == -973932308 & 0xFFFFFFFF
    for n in range(0, 12):
        key = bytes(range(200, 200 + n))
        assert murmur2(key) == reference(key)
    key = b"northwind/R-100234"
    assert partition_for(key, 8) == (reference(key) & 0x7FFFFFFF) % 8
