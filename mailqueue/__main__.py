from mailqueue.cli import console_script

console_script()
