-- 0002: the control-plane replica that leads (runs placement, the
-- reconcilers and GitHub polling). It holds a session advisory lock while
-- it leads; on taking it, it bumps epoch, and its writes carry that epoch:
-- a transaction whose epoch is no longer this row's is refused (a deposed
-- leader's late writes). One row, id 1.
CREATE TABLE leader (
	id     INTEGER PRIMARY KEY CHECK (id = 1),
	epoch  BIGINT  NOT NULL,
	holder TEXT    NOT NULL,
	since  BIGINT  NOT NULL
);
INSERT INTO leader (id, epoch, holder, since) VALUES (1, 0, '', 0);
