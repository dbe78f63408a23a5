"""State numbers are keepalived's: dashboards and keepalived-exporter queries read ours as theirs."""

from agent.core.states import State


def test_states_keep_keepalived_numbers():
    assert (State.INIT, State.BACKUP, State.MASTER, State.FAULT) == (0, 1, 2, 3)


def test_no_state_is_an_alias_of_another():
    assert len(State.__members__) == len(State)
