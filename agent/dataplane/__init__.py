"""One adapter per kernel facility; none of them knows about the election."""
