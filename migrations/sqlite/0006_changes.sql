-- Recall and edit (docs/protocol.md, "Recall and edit"). `kind`: 0 a
-- message, 1 a message edited since, 2 a message recalled (its body is
-- emptied), 3 the event that recalled message `ref_seq`, 4 the event that
-- edited message `ref_seq` (its body is the new text). Events take a seq of
-- their own and are delivered as messages are.
ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN ref_seq INTEGER NOT NULL DEFAULT 0;
