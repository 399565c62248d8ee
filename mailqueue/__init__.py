"""mailqueue: GNU Mailman-style message queues and queue runners.

The public names are re-exported here; each is documented in its own module.
"""

from mailqueue.configuration import Configuration, config, create_list
from mailqueue.lists import ListExistsError, MailingList
from mailqueue.message import Message, message_from_string
from mailqueue.qfile import QueueFileError
from mailqueue.runner import Runner, RunnerInterrupt
from mailqueue.switchboard import Switchboard

__version__ = "0.1.0"

__all__ = [
    "Configuration",
    "ListExistsError",
    "MailingList",
    "Message",
    "QueueFileError",
    "Runner",
    "RunnerInterrupt",
    "Switchboard",
    "config",
    "create_list",
    "message_from_string",
]
