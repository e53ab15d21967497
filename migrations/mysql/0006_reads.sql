-- See migrations/sqlite/0005_reads.sql.
CREATE TABLE reads (
    user_id  BIGINT      NOT NULL,
    conv     VARCHAR(48) NOT NULL,
    read_seq BIGINT      NOT NULL,
    PRIMARY KEY (user_id, conv),
    KEY reads_by_conv (conv)
) ENGINE=InnoDB DEFAULT CHARSET=ascii;
