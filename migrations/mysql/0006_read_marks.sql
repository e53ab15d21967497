-- See migrations/sqlite/0005_read_marks.sql.
CREATE TABLE read_marks (
    user_id  BIGINT      NOT NULL,
    conv     VARCHAR(48) NOT NULL,
    read_seq BIGINT      NOT NULL,
    PRIMARY KEY (user_id, conv),
    KEY read_marks_by_conv (conv)
) ENGINE=InnoDB DEFAULT CHARSET=ascii;
