"""The control socket's connection slots (supervisor/control/server.py ``_Slots``): 4 per read-only
user, 32 for all of them together, operators apart (README "Security"). The e2e test
(tests/e2e/test_bad_input.py) holds real connections; this one checks the arithmetic at its edges."""

from __future__ import annotations

from supervisor.control.server import MAX_PER_OPERATOR, MAX_PER_READER, MAX_READERS_TOTAL, _Slots


def test_the_limits_are_the_documented_ones():
    assert (MAX_PER_READER, MAX_READERS_TOTAL, MAX_PER_OPERATOR) == (4, 32, 64)


def test_a_reader_gets_four_slots_and_a_fifth_is_refused_with_the_reason():
    slots = _Slots()
    assert [slots.take(1000, False) for _ in range(MAX_PER_READER)] == [None] * MAX_PER_READER
    assert slots.take(1000, False) == "too many control connections from uid 1000 (4); close some and try again"
    assert slots.take(1001, False) is None                   # another reader is not affected


def test_readers_together_get_32_slots_and_operators_are_apart():
    slots = _Slots()
    for uid in range(MAX_READERS_TOTAL // MAX_PER_READER):
        for _ in range(MAX_PER_READER):
            assert slots.take(2000 + uid, False) is None
    assert slots.take(3000, False) == "too many read-only control connections; try again"
    assert slots.take(0, True) is None                       # root and operators keep their own slots
    slots.give_back(2000, False)
    assert slots.take(3000, False) is None                   # a slot given back is free for anyone
    assert slots.take(3001, False) == "too many read-only control connections; try again"


def test_an_operator_is_bounded_only_against_a_runaway_script():
    slots = _Slots()
    assert all(slots.take(0, True) is None for _ in range(MAX_PER_OPERATOR))
    assert slots.take(0, True) == f"too many control connections from uid 0 ({MAX_PER_OPERATOR}); close some and try again"
    for _ in range(MAX_READERS_TOTAL):                        # operators' slots are not the readers' pool
        assert slots.take(4000 + _ // MAX_PER_READER, False) is None


def test_giving_back_frees_the_users_slot_and_the_pool():
    slots = _Slots()
    for _ in range(MAX_PER_READER):
        slots.take(1000, False)
    slots.give_back(1000, False)
    assert slots.take(1000, False) is None
    assert slots.take(1000, False) is not None
    for _ in range(MAX_PER_READER):
        slots.give_back(1000, False)
    assert slots._per_uid == {} and slots._readers == 0    # nothing left behind by a user who went away
    slots.take(0, True)
    slots.give_back(0, True)
    assert slots._per_uid == {} and slots._readers == 0    # an operator's slot is not the pool's


def test_a_release_of_a_slot_never_taken_leaves_nothing_behind():
    slots = _Slots()
    slots.give_back(5, True)                                 # e.g. twice for one connection
    assert slots._per_uid == {}
